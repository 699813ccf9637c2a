# Copyright: openFuyao PD maintainers
# Apache License 2.0 (see LICENSE)
"""Value checks of the layout planner for everything that reaches an argv, an env file or a URL.

Pure functions: each returns the problems it found as text without the ``host X:`` prefix
(the planner adds it), so one rule reads the same for every host and ``collapse`` can merge
a group-level mistake into one line.
"""

from __future__ import annotations

import ipaddress
import re

SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# RFC 1123 labels; underscores are allowed because inventory names often use them.
HOST_NAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\Z")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
NIC = re.compile(r"[A-Za-z0-9_.:@-]{1,15}\Z")
# vLLM's --dtype choices.
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")

# Every visible-devices variable a runtime reads: the plan sets the one of its platform from
# the devices it assigns, so none may come from pd_env.
VISIBLE_DEVICES_VARS = (
    "ASCEND_RT_VISIBLE_DEVICES",
    "ASCEND_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
)

# `vllm serve` flags the plan writes itself -> the variable that owns the value ({role} is
# the instance's role). Short aliases are vLLM's own (-tp, -dp).
OWNED_FLAGS = {
    "--model": "pd_model",
    "--served-model-name": "pd_served_model_name",
    "--host": "pd_bind_host",
    "--port": "pd_{role}http_port_base",
    "--tensor-parallel-size": "pd_{role}tp",
    "-tp": "pd_{role}tp",
    "--data-parallel-size": "pd_{role}dp",
    "-dp": "pd_{role}dp",
    "--data-parallel-address": "pd_{role}dp_address",
    "--data-parallel-rpc-port": "pd_{role}dp_rpc_port_base",
    "--kv-transfer-config": "pd_connector (connector settings: pd_kv_extra_config)",
    "--seed": "pd_{role}seed",
    "--max-model-len": "pd_{role}max_model_len",
    "--max-num-batched-tokens": "pd_{role}max_num_batched_tokens",
    "--max-num-seqs": "pd_{role}max_num_seqs",
    "--trust-remote-code": "pd_trust_remote_code",
    "--no-trust-remote-code": "pd_trust_remote_code",
    "--enforce-eager": "pd_{role}enforce_eager",
    "--no-enforce-eager": "pd_{role}enforce_eager",
    "--gpu-memory-utilization": "pd_{role}gpu_memory_utilization",
    "--block-size": "pd_block_size",
    "--dtype": "pd_dtype",
    "--enable-prefix-caching": "pd_{role}enable_prefix_caching",
    "--no-enable-prefix-caching": "pd_{role}enable_prefix_caching",
    "--scheduling-policy": "pd_batch_integration",
}

_HOST_LINE = re.compile(r"host (\S+): (.*)\Z", re.S)


def collapse(lines):
    """Merge ``host X: msg`` lines that differ only in the host into ``hosts X, Y: msg``.

    A mistake in group_vars reaches every host of the group; it is one problem, reported once,
    at the place of its first occurrence.
    """
    order = []
    hosts_of = {}
    for line in lines:
        match = _HOST_LINE.match(line)
        if not match:
            if line not in order:
                order.append(line)
            continue
        host, rest = match.groups()
        if rest not in hosts_of:
            hosts_of[rest] = []
            order.append((rest,))
        if host not in hosts_of[rest]:
            hosts_of[rest].append(host)
    out = []
    for item in order:
        if isinstance(item, str):
            out.append(item)
            continue
        names = hosts_of[item[0]]
        prefix = f"host {names[0]}" if len(names) == 1 else "hosts " + ", ".join(names)
        out.append(f"{prefix}: {item[0]}")
    return out


_UINT = re.compile(r"[0-9]+")


def uint_text(value):
    """The integer of an int or of a text of ASCII digits (INI inventories give strings), else None.

    str.isdigit() would also take "¹" or "٣", which int() refuses: a crash instead of a line."""
    if isinstance(value, str) and _UINT.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def brief(value, limit=60):
    """repr() of a value cut to one readable piece of a line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def strip_brackets(text):
    """``[fe80::1]`` (URL form, as people write IPv6 in inventories) -> ``fe80::1``."""
    if text.startswith("[") and text.endswith("]"):
        return text[1:-1]
    return text


def address_problem(value):
    """None when value is an IP address or a host name, else why not."""
    if not isinstance(value, str) or not value:
        return "is not an IP address or host name"
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if HOST_NAME.match(value) and not value.replace(".", "").isdigit():
        return None
    return "is not an IP address or host name"


def machine_key(address):
    """One spelling per machine: host names are case-insensitive, IPv6 has many spellings."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return str(address).lower().rstrip(".")


def text_problem(value, what, allow_space=False):
    """None when value is a non-empty string usable as one argv word, else why not."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"must be {what} (a string), got {type(value).__name__}"
    text = str(value)
    if not text.strip():
        return f"is empty: set {what}"
    if CONTROL.search(text):
        return "contains a control character (newline, tab, NUL...): remove it"
    if not allow_space and any(c.isspace() for c in text):
        return f"contains white space: {what} is one word"
    if text.startswith("-"):
        return f"starts with '-' and would be read as a vllm flag: set {what}"
    return None


def flag_name(word):
    """The flag an argv word sets: ``--tensor_parallel_size=2`` -> ``--tensor-parallel-size``;
    ``--kv-transfer-config.kv_role`` (vLLM's dotted form) -> ``--kv-transfer-config``."""
    name = word.split("=", 1)[0]
    if name.startswith("--"):
        name = "--" + name[2:].replace("_", "-").split(".", 1)[0]
    return name


def owner_var(template, var, role):
    """The owning variable in the same form as var: pd_prefill_x for pd_prefill_*, else pd_x."""
    return template.format(role=f"{role}_" if var.startswith(f"pd_{role}_") else "")


def extra_args_problems(args, var, role):
    """Problems of the extra `vllm serve` words of one instance (already split)."""
    out = []
    for i, word in enumerate(args):
        if CONTROL.search(word):
            out.append(f"{var}[{i}]={brief(word)} contains a control character: remove it")
    if args and not args[0].startswith("-"):
        out.append(
            f"{var} starts with {brief(args[0])}, which is not a flag: extra arguments are "
            "--flag [value] pairs (the model is pd_model)"
        )
    for word in args:
        owner = OWNED_FLAGS.get(flag_name(word))
        if owner:
            out.append(
                f"{var} sets {flag_name(word)}, which the plan owns: remove it and set {owner_var(owner, var, role)} instead"
            )
    return out


def env_problems(env, var, owned):
    """Problems of a user environment mapping; owned maps planner-set names to their variable."""
    out = []
    for key, value in env.items():
        if not isinstance(key, str) or not SHELL_NAME.match(key):
            out.append(
                f"{var} key {brief(key)} is not a shell variable name (letters, digits, _; not starting with a digit)"
            )
            continue
        if key in owned:
            out.append(f"{var} sets {key}, which the plan owns: remove it and set {owned[key]} instead")
            continue
        if isinstance(value, (dict, list, tuple)) or value is None:
            out.append(f"{var}.{key}={brief(value)} must be a single value (string or number)")
        elif CONTROL.search(str(value)):
            out.append(f"{var}.{key}={brief(value)} contains a control character: remove it")
    return out
