# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
"""The `docker run` options of an instance container, in the seed's order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DOCUMENTATION = r"""
---
name: docker_run_options
short_description: The C(docker run) options of an instance container
version_added: "0.1.0"
description:
  - Network, shared memory, privilege, working directory, devices, entrypoint and bind mounts in the order of
    the seed's C(docker run), then the extra options; one argv item per element.
options:
  _input:
    description: The bind mounts (C(host:container[:mode])).
    type: list
    elements: str
    required: true
  net:
    description: Network mode (C(--net)).
    type: str
    required: true
  shm_size:
    description: Shared-memory size (C(--shm-size)).
    type: str
    required: true
  privileged:
    description: Add C(--privileged=true).
    type: bool
    required: true
  workdir:
    description: Working directory (C(-w)).
    type: str
    required: true
  devices:
    description: Device files (C(--device)).
    type: list
    elements: str
    required: true
  entrypoint:
    description: Entrypoint (C(--entrypoint)).
    type: str
    required: true
  extra:
    description: Options appended last, one argv item each.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Show the options of a container
  ansible.builtin.debug:
    msg: >-
      {{ ['/data:/data'] | openfuyao.pd.docker_run_options(net='host', shm_size='500g', privileged=true,
                                                           workdir='/home', devices=['/dev/davinci0'],
                                                           entrypoint='bash') }}
    # ['--net=host', '--shm-size=500g', '--privileged=true', '-w', '/home', '--device=/dev/davinci0',
    #  '--entrypoint=bash', '-v', '/data:/data']
"""

RETURN = r"""
_value:
  description: The options, one argv item per element.
  type: list
  elements: str
"""


def docker_run_options(
    volumes: Sequence[str],
    *,
    net: str,
    shm_size: str,
    privileged: bool,
    workdir: str,
    devices: Sequence[str],
    entrypoint: str,
    extra: Sequence[str] = (),
) -> list[str]:
    out = [f"--net={net}", f"--shm-size={shm_size}"]
    if privileged:
        out.append("--privileged=true")
    out += ["-w", workdir]
    out += [f"--device={dev}" for dev in devices]
    out.append(f"--entrypoint={entrypoint}")
    for vol in volumes:
        out += ["-v", vol]
    return out + list(extra)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"docker_run_options": docker_run_options}
