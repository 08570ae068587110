# ansible.cfg's strategy: Ansible's linear strategy over Mitogen's connections (one Python
# interpreter kept per host for the whole run, modules sent to it in process), which makes a
# run of site.yml two to three times faster (docs/performance.md, "Converge").
# Mitogen installs with the control node's requirements (requirements.txt). Without it, or to
# rule it out when a run misbehaves, run with ANSIBLE_STRATEGY=linear.
from __future__ import annotations

from ansible.errors import AnsibleError

try:
    from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: F401
except ImportError as exc:  # pragma: no cover - the control node's requirements install it
    raise AnsibleError(
        f"ansible.cfg's strategy needs Mitogen ({exc}): install the control node's requirements "
        "(pip install -r requirements.txt), or run with ANSIBLE_STRATEGY=linear") from exc

DOCUMENTATION = """
name: mitogen_linear
short_description: Ansible's linear strategy over Mitogen's connections
description:
  - Runs like the linear strategy; Mitogen keeps one Python interpreter per host for the
    whole run and runs modules in it, instead of one SSH round and one interpreter per task.
  - Set ANSIBLE_STRATEGY=linear to run without it.
"""
