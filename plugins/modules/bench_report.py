# Copyright (c) openFuyao PD contributors
# Apache License 2.0 (see LICENSE)
# This file only documents the action plugin plugins/action/bench_report.py, which does the work
# on the controller.

DOCUMENTATION = r"""
---
module: bench_report
short_description: Summarise a vllm bench serve result, compare it with a previous one and plot it
version_added: "0.1.0"
description:
  - Reads the result file C(vllm bench serve --save-result) wrote (with C(--append-result), its last line) and
    returns the table operators look at first - TTFT, TPOT, ITL and E2EL p50/p90/p99, throughput and goodput -
    with the summary as structured data.
  - With O(previous), the table puts that run beside this one with the change, marked better or worse.
  - With O(plot), a PNG bar chart of the latency percentiles (and the per-request TTFT when the file has the
    detailed lists) is written there when matplotlib imports on the controller; otherwise RV(plot) says why not.
  - Runs entirely on the controller, where C(ansible.builtin.fetch) put the result; no host is contacted.
  - A file that cannot be used (missing, empty, not JSON, not a C(vllm bench serve) result) fails the task
    with one line naming the file and the fix.
options:
  result:
    description:
      - The result JSON on the controller. A relative path is taken from the current directory.
    type: path
    required: true
  previous:
    description:
      - An earlier result JSON on the controller to compare against. A relative path is taken from the
        current directory.
    type: path
  plot:
    description:
      - Where to write the PNG plot on the controller (its directory is created). Not plotted when not set.
    type: path
extends_documentation_fragment:
  - openfuyao.pd.attributes
attributes:
  check_mode:
    support: full
    details: The files are read and the table is returned the same way; the plot is not written.
  diff_mode:
    support: none
  action:
    description: Indicates this has a corresponding action plugin so some parts of the work happen on the controller.
    support: full
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: all
seealso:
  - name: playbooks/bench.yml
    description: Runs C(vllm bench serve) through the proxy, fetches the result and reports it with this action.
    link: https://github.com/openfuyao/openfuyao.pd/blob/main/docs/day2.md
author:
  - openFuyao PD contributors (@openfuyao)
"""

EXAMPLES = r"""
- name: Summarise, compare and plot on the controller
  openfuyao.pd.bench_report:
    result: bench-results/bench-20261207T120000Z.json
    previous: bench-results/bench-20261206T120000Z.json
    plot: bench-results/bench-20261207T120000Z.png
  register: report

- name: Show the summary
  ansible.builtin.debug:
    msg: "{{ report.table }}"
"""

RETURN = r"""
table:
  description: The table, aligned in columns (metric, this run, and previous and change with O(previous)).
  returned: success
  type: str
  sample: |-
    metric               this run
    -------------------  --------
    successful requests  10
current:
  description: The numbers of this run.
  returned: success
  type: dict
  contains:
    source:
      description: O(result) as given.
      type: str
    completed:
      description: Successful requests.
      type: int
    failed:
      description: Failed requests.
      type: int
    duration_s:
      description: How long the run took, in seconds.
      type: float
    num_prompts:
      description: Prompts sent; null when the file does not say.
      type: int
    latency_ms:
      description: By metric (C(ttft), C(tpot), C(itl), C(e2el), those the run recorded), C(p50)/C(p90)/C(p99) in ms; null when unknown.
      type: dict
    throughput:
      description: C(request_throughput), C(output_throughput), C(total_token_throughput), C(request_goodput); null when unknown.
      type: dict
  sample: {source: bench.json, completed: 10, failed: 0, duration_s: 10.2, num_prompts: 10,
           latency_ms: {ttft: {p50: 120.0, p90: 150.0, p99: 180.0}}, throughput: {request_throughput: 0.98}}
previous:
  description: The numbers of O(previous), as in RV(current); null without O(previous).
  returned: success
  type: dict
plot:
  description: One line saying where the plot was written, or why it was not (no matplotlib, not writable, check mode).
  returned: success and O(plot) given
  type: str
  sample: plot written to bench-results/bench-20261207T120000Z.png
"""
