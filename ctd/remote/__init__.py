"""The remote API's foundation: HTTPS listener material, API tokens, identities, audit log.

Nothing here knows the instance manager: the API server wires these in as middlewares.
"""
