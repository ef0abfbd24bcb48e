"""Host readiness checks for ctd (`ctctl check`). Imports nothing from ctd or ctctl.

    results = run_checks()                 # list[CheckResult]
    print(render_table(results)); sys.exit(exit_code(results))
"""

from .kvm import kvm_usable
from .model import CheckResult, Status
from .report import exit_code, render_table, to_dict, to_json
from .runner import run_checks

__all__ = ["CheckResult", "Status", "exit_code", "kvm_usable", "render_table", "run_checks",
           "to_dict", "to_json"]
