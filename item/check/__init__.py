"""``item check``: the chosen models run on the shipped samples and are compared with hand-written
expectations (see ``checks``). Front door: ``run_checks``, ``load_expectations``, ``CheckReport``, ``Check``."""

from item.check.checks import Check, CheckReport, load_expectations, run_checks

__all__ = ["Check", "CheckReport", "load_expectations", "run_checks"]
