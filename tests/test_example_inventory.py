"""``inventories/example`` runs: its groups and variables fit what the playbooks need.

No root, no lab, no host is contacted. With the example's vault (its password is published in
``inventories/example/.vault-pass.example``):

- ``ansible-inventory --list``: every host is in the group ``domain_<viocluster_domain>``, the
  domains' subnets, network ids and pools are consistent, and every variable that
  ``playbooks/site.yml`` reads without a default is defined for every host of the plays that read
  it (found by parsing site.yml's templates, so a new variable there is checked too);
- ``ansible-playbook --syntax-check`` of every playbook against the inventory;
- every role template (``roles/*/templates/*.j2``) rendered with the variables site.yml gives
  its role on each host of the example, by ansible-playbook itself: a playbook made from
  site.yml whose roles are replaced by stand-ins with the same defaults, argument specs and
  templates, whose tasks only resolve every variable site.yml passes and render the templates
  on the control node. Results of tasks that run on real hosts (the accounts the lending_host
  role creates, the certificate fingerprint the broker role records) are stand-in values.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jinja2
import jinja2.nodes
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventories" / "example"
VAULT_PASS = EXAMPLE / ".vault-pass.example"
PLAYBOOKS = REPO / "playbooks"
ROLES = REPO / "roles"
VENV_BIN = Path(sys.executable).parent

# Names Ansible itself defines for every host and play.
MAGIC = {
    "inventory_hostname", "inventory_hostname_short", "groups", "group_names", "hostvars",
    "playbook_dir", "inventory_dir", "inventory_file", "role_path", "role_name", "omit", "item",
    "ansible_play_hosts", "ansible_play_hosts_all", "ansible_play_batch", "ansible_check_mode",
    "ansible_playbook_python", "ansible_loop", "ansible_facts", "ansible_version", "lookup",
    "query", "q", "now", "undef", "range", "dict", "lipsum", "cycler", "joiner", "namespace",
}
# Task keywords: everything else in a task is its module.
TASK_KEYWORDS = {
    "name", "when", "loop", "loop_control", "register", "changed_when", "failed_when", "tags",
    "become", "become_user", "delegate_to", "run_once", "no_log", "notify", "vars", "throttle",
    "check_mode", "diff", "ignore_errors", "retries", "delay", "until", "environment", "args",
    "with_items", "listen", "any_errors_fatal", "timeout", "delegate_facts", "collections",
}
# Values of tasks that only run on real hosts, which some templates read: stand-ins per role.
REGISTERED_STAND_INS: dict[str, dict[str, str]] = {
    # the accounts the role creates (ansible.builtin.user results: item, name, uid, home)
    "lending_host": {
        "lending_host_accounts": (
            "{% set r = [] %}{% for p in lending_host_peers %}{% set _ = r.append({'item': p, "
            "'name': p.account, 'uid': 2000 + loop.index, 'home': '/home/' ~ p.account}) %}"
            "{% endfor %}{{ {'results': r} }}"
        ),
    },
    # the SHA-256 fingerprint of the domain's certificate (viocluster broker certs)
    "broker": {"broker_fingerprint": "sha256:" + "0" * 64},
}


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    env["ANSIBLE_FILTER_PLUGINS"] = str(REPO / "filter_plugins")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
    return env


def run(cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, env={**ansible_env(), **env}, capture_output=True,
                          text=True, timeout=600, check=False)


# --- the inventory ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inventory() -> dict[str, Any]:
    proc = run([str(VENV_BIN / "ansible-inventory"), "-i", str(EXAMPLE),
                "--vault-password-file", str(VAULT_PASS), "--list"])
    assert proc.returncode == 0, f"ansible-inventory failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def group_hosts(inv: dict[str, Any], group: str) -> set[str]:
    """Every host of a group, its children's included."""
    entry = inv.get(group, {})
    hosts = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts |= group_hosts(inv, child)
    if group == "all":
        hosts |= set(inv["_meta"]["hostvars"])
    return hosts


MODE_GROUPS = ("viocluster_adopted", "viocluster_installed", "viocluster_pbs")


def mode_group(inv: dict[str, Any], group: str) -> set[str]:
    """The groups preflight.yml makes at run time: hosts by their domain's mode (and the
    installed ones of PBS domains)."""
    adopted = {h for h in inv["_meta"]["hostvars"]
               if str(hostvars(inv, h).get("viocluster_adopt", False)).lower() in ("true", "yes", "1")}
    if group == "viocluster_adopted":
        return adopted
    installed = set(inv["_meta"]["hostvars"]) - adopted
    if group == "viocluster_pbs":
        return {h for h in installed if hostvars(inv, h).get("viocluster_scheduler", "slurm") == "pbs"}
    return installed


def pattern_hosts(inv: dict[str, Any], pattern: str) -> set[str]:
    """Hosts of a play pattern made of groups joined by ':', then narrowed by ':&group' and
    ':!group' (what site.yml uses)."""
    hosts: set[str] = set()
    narrow: list[set[str]] = []
    leave_out: list[set[str]] = []
    for part in pattern.split(":"):
        assert part and part[0] != "~" and "{{" not in part, \
            f"pattern {pattern!r}: extend this helper"
        if part[0] in "&!":
            group = part[1:]
            members = mode_group(inv, group) if group in MODE_GROUPS else group_hosts(inv, group)
            (narrow if part[0] == "&" else leave_out).append(members)
        else:
            hosts |= group_hosts(inv, part) if part in inv or part == "all" else {part}
    for other in narrow:
        hosts &= other
    for other in leave_out:
        hosts -= other
    return hosts


def hostvars(inv: dict[str, Any], host: str) -> dict[str, Any]:
    return inv["_meta"]["hostvars"].get(host, {})


def domains(inv: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each domain's settings, as its head node sees them."""
    out = {}
    for host in group_hosts(inv, "heads"):
        hv = hostvars(inv, host)
        out[hv["viocluster_domain"]] = hv
    return out


def test_vault_files_are_committed_encrypted() -> None:
    vaults = sorted(EXAMPLE.glob("group_vars/*/vault.yml"))
    assert vaults, "inventories/example has no group_vars/<group>/vault.yml"
    for path in vaults:
        first = path.read_text().splitlines()[0]
        assert first.startswith("$ANSIBLE_VAULT;"), \
            f"{path.relative_to(REPO)} is not encrypted (ansible-vault encrypt)"


def test_every_host_is_in_the_group_of_its_domain(inventory: dict[str, Any]) -> None:
    managed = pattern_hosts(inventory, "heads:computes:lending_hosts")
    assert managed, "no host in heads, computes or lending_hosts"
    problems = []
    for host in sorted(managed):
        domain = hostvars(inventory, host).get("viocluster_domain")
        if domain is None:
            problems.append(f"{host}: viocluster_domain is not set")
        elif host not in group_hosts(inventory, f"domain_{domain}"):
            problems.append(f"{host}: viocluster_domain is {domain!r} but the host is not in "
                            f"group domain_{domain}")
    assert not problems, "\n".join(problems)


def test_each_domain_has_one_head_node_and_known_peers(inventory: dict[str, Any]) -> None:
    doms = domains(inventory)
    heads = group_hosts(inventory, "heads")
    problems = []
    for name, hv in sorted(doms.items()):
        members = group_hosts(inventory, f"domain_{name}")
        head = hv["viocluster_head_node"]
        if head not in members or head not in heads:
            problems.append(f"domain {name}: viocluster_head_node {head} is not a head node "
                            "of the domain")
        if len(members & heads) != 1:
            problems.append(f"domain {name}: {len(members & heads)} head nodes, want 1")
        for peer in hv["viocluster_peers"]:
            if peer not in doms or peer == name:
                problems.append(f"domain {name}: peer {peer!r} is not another domain of the inventory")
    assert not problems, "\n".join(problems)


def test_domains_have_their_own_network_ids_subnets_and_pools(inventory: dict[str, Any]) -> None:
    doms = domains(inventory)
    ids = [hv["viocluster_network_id"] for hv in doms.values()]
    assert len(set(ids)) == len(ids), f"network ids are not unique: {ids}"
    subnets = {name: ipaddress.ip_network(hv["viocluster_virtual_subnet"])
               for name, hv in doms.items()}
    names = sorted(subnets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not subnets[a].overlaps(subnets[b]), f"virtual subnets of {a} and {b} overlap"
    for name, hv in doms.items():
        assert "viocluster_vm_pool" in hv, f"domain {name}: viocluster_vm_pool is not set"
        pool = ipaddress.ip_network(hv["viocluster_vm_pool"])
        assert pool.subnet_of(subnets[name]), \
            f"domain {name}: viocluster_vm_pool {pool} is outside {subnets[name]}"
        for host in group_hosts(inventory, f"domain_{name}"):
            addr = ipaddress.ip_address(hostvars(inventory, host)["viocluster_virtual_address"])
            assert addr in subnets[name], \
                f"{host}: viocluster_virtual_address {addr} is outside {subnets[name]}"
            assert addr not in pool, \
                f"{host}: viocluster_virtual_address {addr} is inside the VM pool {pool}"


# --- variables site.yml reads ---------------------------------------------------------------------


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


class _Names(jinja2.visitor.NodeVisitor):
    """Top-level names a template reads whatever the values: not under `default`, not in
    `is defined` tests, not only in a branch of an `if` (the inventory may never take it)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.branch = 0

    def visit_Filter(self, node: jinja2.nodes.Filter) -> None:
        if node.name in ("default", "d"):
            for arg in node.args:
                self.visit(arg)
            return
        self.generic_visit(node)

    def visit_Test(self, node: jinja2.nodes.Test) -> None:
        if node.name in ("defined", "undefined"):
            return
        self.generic_visit(node)

    def _branches(self, test: jinja2.nodes.Node, branches: list[Any]) -> None:
        self.visit(test)
        self.branch += 1
        for branch in branches:
            for node in branch if isinstance(branch, list) else [branch]:
                if node is not None:
                    self.visit(node)
        self.branch -= 1

    def visit_If(self, node: jinja2.nodes.If) -> None:
        self._branches(node.test, [node.body, node.elif_, node.else_])

    def visit_CondExpr(self, node: jinja2.nodes.CondExpr) -> None:
        self._branches(node.test, [node.expr1, node.expr2])

    def visit_Name(self, node: jinja2.nodes.Name) -> None:
        if node.ctx == "load" and not self.branch:
            self.names.add(node.name)


def template_reads(text: str) -> set[str]:
    """Names a template reads from outside itself (its own loop and set names left out)."""
    env = jinja2.Environment(extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"])
    ast = env.parse(text)
    visitor = _Names()
    visitor.visit(ast)
    local = {n.name for n in ast.find_all(jinja2.nodes.Name) if n.ctx in ("store", "param")}
    return visitor.names - local


def _tasks(tasks: list[dict[str, Any]] | None) -> Iterator[dict[str, Any]]:
    for task in tasks or []:
        if "block" in task:
            for key in ("block", "rescue", "always"):
                yield from _tasks(task.get(key))
        else:
            yield task


def role_defaults(role: str) -> set[str]:
    names: set[str] = set()
    for sub in ("defaults", "vars"):
        path = ROLES / role / sub / "main.yml"
        if path.is_file():
            names |= set(yaml.safe_load(path.read_text()) or {})
    return names


def site_plays() -> list[dict[str, Any]]:
    return [p for p in yaml.safe_load((PLAYBOOKS / "site.yml").read_text()) if "hosts" in p]


def _conditions(entry: dict[str, Any]) -> list[str]:
    """An entry's `when`, as templates."""
    when = entry.get("when", [])
    return [f"{{{{ {w} }}}}" for w in ([when] if isinstance(when, str) else when)]


def needed_by_play(play: dict[str, Any]) -> set[str]:
    """Variables a play of site.yml reads that it, its roles and Ansible do not define."""
    provided = set(MAGIC) | set(play.get("vars") or {})
    texts = list(_strings(play.get("vars") or {}))
    for entry in play.get("roles") or []:
        entry = {"role": entry} if isinstance(entry, str) else entry
        provided |= role_defaults(entry["role"]) | set(entry.get("vars") or {})
        texts += list(_strings(entry.get("vars") or {})) + _conditions(entry)
    for task in _tasks(play.get("tasks")):
        provided |= {task["register"]} if "register" in task else set()
        texts += list(_strings({k: v for k, v in task.items() if k not in ("name", "register", "when")}))
        texts += _conditions(task)
    needed: set[str] = set()
    for text in texts:
        needed |= template_reads(text)
    return needed - provided


def test_site_yml_imports_the_preflight_first() -> None:
    first = yaml.safe_load((PLAYBOOKS / "site.yml").read_text())[0]
    assert first == {"ansible.builtin.import_playbook": "preflight.yml"}, \
        f"site.yml starts with {first}"


def test_every_variable_site_yml_reads_is_defined_for_the_hosts_of_its_plays(
        inventory: dict[str, Any]) -> None:
    problems = []
    for play in site_plays():
        hosts = pattern_hosts(inventory, play["hosts"])
        if not hosts and ":&viocluster_adopted" in play["hosts"]:
            continue  # the example adopts no domain (tests/adopt and the adopt fixture do)
        if not hosts and ":&viocluster_pbs" in play["hosts"]:
            continue  # the example runs no PBS domain (the lab's domain c does)
        assert hosts, \
            f"play {play.get('name')!r}: its hosts {play['hosts']!r} match no host of the example"
        for var in sorted(needed_by_play(play)):
            missing = sorted(h for h in hosts if var not in hostvars(inventory, h))
            if missing:
                problems.append(f"{var} (play {play.get('name')!r}): not defined for "
                                f"{', '.join(missing)}")
    assert not problems, ("variables site.yml needs that inventories/example does not define:\n"
                          + "\n".join(problems))


def test_the_variable_check_sees_what_site_yml_reads() -> None:
    """The parser behind the test above finds the inventory's variables in site.yml at all."""
    needed = set().union(*(needed_by_play(p) for p in site_plays()))
    for var in ("viocluster_domain", "viocluster_vm_pool", "viocluster_broker_policy",
                "viocluster_broker_wheelhouse", "viocluster_broker_ssh_private_key_files"):
        assert var in needed, f"{var} not found among the variables site.yml reads: {sorted(needed)}"
    assert "viocluster_site" not in needed, "a variable read with | default(...) counted as needed"


# --- playbooks ---------------------------------------------------------------------------


@pytest.mark.parametrize("playbook", sorted(p.name for p in PLAYBOOKS.glob("*.yml")))
def test_playbook_syntax_against_the_example(playbook: str) -> None:
    proc = run([str(VENV_BIN / "ansible-playbook"), "-i", str(EXAMPLE), "--vault-password-file",
                str(VAULT_PASS), "--syntax-check", str(PLAYBOOKS / playbook)])
    assert proc.returncode == 0, f"{playbook}: {proc.stdout}{proc.stderr}"


# --- role templates ----------------------------------------------------------------------


def template_loops(role: str) -> dict[str, dict[str, Any]]:
    """For each template of a role: the loop (and loop_control) of the task that renders it."""
    loops: dict[str, dict[str, Any]] = {}
    for path in sorted((ROLES / role / "tasks").glob("*.yml")):
        for task in _tasks(yaml.safe_load(path.read_text())):
            args = task.get("ansible.builtin.template") or task.get("template")
            if isinstance(args, dict) and args.get("src") not in loops:
                loops[args["src"]] = {k: task[k] for k in ("loop", "loop_control") if k in task}
    return loops


def render_role(role: str, dest: Path) -> None:
    """A stand-in of `role`: same defaults, vars, argument specs and templates; its tasks resolve
    the variables site.yml gives the role, set the registered stand-ins and render every template
    into the host's fact render_out ({"ROLE/NAME[#INDEX]": text})."""
    src = ROLES / role
    dest.mkdir(parents=True)
    for sub in ("defaults", "vars"):
        if (src / sub / "main.yml").is_file():
            (dest / sub).mkdir()
            (dest / sub / "main.yml").write_text((src / sub / "main.yml").read_text())
    if (src / "meta" / "argument_specs.yml").is_file():
        (dest / "meta").mkdir()
        (dest / "meta" / "argument_specs.yml").write_text(
            (src / "meta" / "argument_specs.yml").read_text())
    if (src / "templates").is_dir():
        (dest / "templates").symlink_to(src / "templates")
    tasks: list[dict[str, Any]] = [resolve_task("render_resolve | default([])", "role vars")]
    if role in REGISTERED_STAND_INS:
        tasks.append({"name": "Stand-ins of results of tasks that run on real hosts",
                      "ansible.builtin.set_fact": REGISTERED_STAND_INS[role]})
    loops = template_loops(role)
    templates = sorted(p.name for p in (src / "templates").glob("*.j2"))
    for template in templates:
        # Rendered on the control node by the template lookup, as the template action renders;
        # kept in the host's fact render_out, which the last play writes to one file.
        loop = loops.get(template, {})
        key = f"'{role}/{template[:-3]}'" + (" ~ '#' ~ render_index" if loop else "")
        task: dict[str, Any] = {
            "name": f"Render {role}/templates/{template}",
            "ansible.builtin.set_fact": {
                "render_out": f"{{{{ render_out | default({{}}) | combine({{{key}: "
                              f"lookup('ansible.builtin.template', '{template}')}}) }}}}",
            },
        }
        if loop:
            task["loop"] = loop["loop"]
            task["loop_control"] = {**loop.get("loop_control", {}), "index_var": "render_index"}
        tasks.append(task)
    (dest / "tasks").mkdir()
    (dest / "tasks" / "main.yml").write_text(yaml.safe_dump(tasks, sort_keys=False))


def resolve_task(names: list[str] | str, what: str) -> dict[str, Any]:
    """A task that resolves each named variable in full (every nested template): an undefined
    variable anywhere in it fails the task, naming it."""
    return {
        "name": f"Resolve the variables site.yml passes: {what}",
        "ansible.builtin.assert": {
            "that": "lookup('ansible.builtin.vars', item) | to_json | length > 0", "quiet": True},
        "loop": names if isinstance(names, list) else f"{{{{ {names} }}}}",
    }


def render_playbook(tmp: Path, out: Path) -> Path:
    """site.yml with stand-in roles and tasks that only resolve what they would use."""
    # preflight.yml's grouping of the hosts by mode, which site.yml's plays target
    preflight = yaml.safe_load((PLAYBOOKS / "preflight.yml").read_text())[0]
    grouping = [t for t in preflight["tasks"]
                if "ansible.builtin.group_by" in t or "ansible.builtin.add_host" in t]
    assert grouping, "preflight.yml no longer groups the hosts by mode: update this helper"
    plays: list[dict[str, Any]] = [{"name": "Group the hosts by mode", "hosts": preflight["hosts"],
                                    "gather_facts": False, "tasks": grouping}]
    roles_dir = tmp / "roles"
    made: set[str] = set()
    for play in site_plays():
        new: dict[str, Any] = {"name": play.get("name", ""), "hosts": play["hosts"],
                               "gather_facts": False}
        if play.get("vars"):
            new["vars"] = play["vars"]
        pre = []
        if play.get("vars"):
            pre.append(resolve_task(sorted(play["vars"]), "play vars"))
        roles = []
        for entry in play.get("roles") or []:
            entry = {"role": entry} if isinstance(entry, str) else dict(entry)
            name = entry["role"]
            if name not in made:
                render_role(name, roles_dir / f"render_{name}")
                made.add(name)
            given = dict(entry.get("vars") or {})
            roles.append({"role": f"render_{name}", "vars": {**given, "render_resolve": sorted(given)},
                          **({"when": entry["when"]} if "when" in entry else {})})
        tasks = []
        for task in _tasks(play.get("tasks")):
            module = {k: v for k, v in task.items() if k not in TASK_KEYWORDS}
            tasks.append({
                "name": f"Resolve the arguments of: {task.get('name', '?')}",
                "ansible.builtin.assert": {"that": "render_args | to_json | length > 0", "quiet": True},
                "vars": {**(task.get("vars") or {}), "render_args": module},
                **({"loop": task["loop"]} if "loop" in task else {}),
            })
        if pre:
            new["pre_tasks"] = pre
        if roles:
            new["roles"] = roles
        if tasks:
            new["tasks"] = tasks
        plays.append(new)
    # One file with what every host rendered: {HOST: {"ROLE/NAME[#INDEX]": text}}.
    write = {
        "name": "Write the rendered files of every host",
        "ansible.builtin.copy": {
            "content": "{{ dict(groups['all'] | zip(groups['all'] | map('extract', hostvars)"
                       " | map(attribute='render_out', default={}))) | to_json }}",
            "dest": str(out), "mode": "0600"},
        "become": False,
    }
    plays.append({"name": "Write what was rendered", "hosts": "localhost", "gather_facts": False,
                  "tasks": [write]})
    path = tmp / "render.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False, width=1000))
    return path


@pytest.mark.slow
def test_role_templates_render_with_the_example_variables(tmp_path: Path) -> None:
    out = tmp_path / "rendered.json"
    playbook = render_playbook(tmp_path, out)
    proc = run([str(VENV_BIN / "ansible-playbook"), "-i", str(EXAMPLE), "--vault-password-file",
                str(VAULT_PASS), str(playbook)], ANSIBLE_ROLES_PATH=str(tmp_path / "roles"))
    if proc.returncode != 0:
        failed, task = [], ""
        for line in (proc.stdout + proc.stderr).splitlines():
            if line.startswith(("TASK [", "PLAY [")):
                task = line.rstrip(" *")
            elif line.startswith("[ERROR]"):
                failed += [task, "  " + line] if task else ["  " + line]
                task = ""
        pytest.fail("rendering site.yml's templates with inventories/example failed:\n"
                    + "\n".join(failed[-40:]) + f"\n(playbook: {playbook})")
    rendered: dict[str, dict[str, str]] = json.loads(out.read_text())

    # Every template of every role site.yml runs unconditionally was rendered for some host.
    seen = {key.split("#")[0] for files in rendered.values() for key in files}
    # (the example runs no PBS domain: the OpenPBS plays have no host there)
    always = {e["role"] for p in site_plays() if ":&viocluster_pbs" not in p["hosts"]
              for e in p.get("roles") or [] if "when" not in e}
    every = {f"{t.parent.parent.name}/{t.name[:-3]}" for role in always
             for t in (ROLES / role / "templates").glob("*.j2")}
    assert not every - seen, f"templates site.yml never rendered: {sorted(every - seen)}"

    # What the example's groups mean, in the rendered files.
    switch = yaml.safe_load(rendered["phys-n01.example.org"]["violin_switch/violin.yml#0"])
    assert {p["name"] for p in switch["peers"]} == {"phys-head.example.org", "phys-n02.example.org"}
    assert switch["network"] == "phys" and switch["tap"] == "vio-phys"
    slurm_conf = rendered["phys-head.example.org"]["slurm/slurm.conf"]
    assert "NodeName=phys-n01.example.org NodeAddr=10.210.1.11 CPUs=32 RealMemory=128000" in slurm_conf
    broker = yaml.safe_load(rendered["chem-head.example.net"]["broker/broker.yml"])
    assert broker["domain"] == "chem" and set(broker["peers"]) == {"phys"}
    assert broker["peers"]["phys"]["url"] == "https://192.0.2.10:8443"
    assert broker["vm_addresses"] == {"pool": "10.210.2.64/26", "prefixlen": 24}
    taps = rendered["chem-n01.example.net"]["lending_host/peer-taps.conf"]
    assert "vcpeerphys0 vcpeerphys vcpeerphysbr" in taps
