"""GET /1.0/metrics on the API (unix socket; HTTPS with a token like every route), and the
optional loopback listener that serves only GET /metrics to a local Prometheus."""

from __future__ import annotations

from aiohttp import web

from ctd.api.context import ApiContext
from ctd.api.handlers import CTX
from ctd.metrics import CONTENT_TYPE, MetricsExporter
from ctd.remote.scope import is_admin, sees

METRICS = web.AppKey("metrics", MetricsExporter)
routes = web.RouteTableDef()


def exporter_for(context: ApiContext) -> MetricsExporter:
    return MetricsExporter(context.instances, context.db.list_instances, context.info,
                           lambda: context.instances.listing.bodies())


async def _serve(exporter: MetricsExporter) -> web.Response:
    response = web.Response(body=await exporter.scrape())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


@routes.get("/1.0/metrics")
async def metrics(request: web.Request) -> web.Response:
    """An operator's scrape: only its project's instances' series (counts too), never others'."""
    if is_admin(request):
        return await _serve(request.app[METRICS])
    context = request.app[CTX]
    scoped = MetricsExporter(context.instances,
                             lambda: [r for r in context.db.list_instances() if sees(request, r.project)], {},
                             lambda: context.instances.listing.bodies())
    return await _serve(scoped)


def loopback_app(exporter: MetricsExporter) -> web.Application:
    """Plain HTTP, no token, one route: what Prometheus scrapes on metrics_address."""
    app = web.Application(client_max_size=4096)

    async def scrape(request: web.Request) -> web.Response:
        return await _serve(exporter)

    app.router.add_get("/metrics", scrape)
    return app
