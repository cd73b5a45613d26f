"""Render RELIABILITY.md from a run of the chaos suite (tests/chaos).

    ./dev bench bench/reliability_report.py --run
        run tests/chaos with RELIABILITY_REPORT set, then render RELIABILITY.md
    ./dev bench bench/reliability_report.py --json reliability.json
        render from the records of an earlier run

Each chaos test records its sale's figures (orders, confirmed, rejected, failed,
lost, oversold, duplicates) and scenario metrics through the ``reliability``
fixture of tests/chaos/conftest.py; this script only formats them, next to the
fixed text that explains each scenario and the decisions behind it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "RELIABILITY.md"
COMMAND = "./dev bench bench/reliability_report.py --run"
FIGURES = ("orders", "confirmed", "rejected", "failed", "lost", "oversold", "duplicates")
TABLE_HEAD = [
    "| Scenario | Orders | Confirmed | Rejected | Failed | Lost | Oversold | Duplicates "
    "| Notes | Test |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
]

#: What each scenario does and what it must show, keyed by the scenario id's number.
SCENARIOS = {
    "1": "A lock node is SIGKILLed once a quarter of the orders is decided and stays down. "
    "Two of three nodes still form the quorum: the sale completes and at most 1% of the "
    "orders may end `failed`.",
    "2": "A lock node is frozen with SIGSTOP (it keeps its sockets but answers nothing) "
    "for 4 s, then resumed. Each process pays one read timeout, then skips the node; "
    "`orders.lock_wait_ms` must keep its p99 under 1 s, overall and while frozen.",
    "3": "Two lock nodes are SIGKILLed for 5 s, then restarted empty on their ports, "
    "while orders arrive at 80/s. Workers run with a retry budget shorter than the "
    "outage (3 retries, <= 0.4 s each, 1 s lease). No order may be decided without the "
    "lock (none between kill + TTL and the restart; every ledger movement fenced, "
    "fences ordered per SKU). Orders that outlive their budget end `failed` with "
    "`lock_unavailable`, and none fails after the nodes are back.",
    "4": "A lock node restarted without persistence while a lease is held. At the lock "
    "level: safe with one empty restart when the holder has all three nodes; a second "
    "holder admitted, with no newer fence, after two empty restarts or one restart of a "
    "two-node lease (the hazard); safe when the crashed node returns only after the TTL, "
    "even if another restarts empty meanwhile; with AOF the lease key and the fence "
    "counter survive SIGKILL. End to end, a sale whose node is restarted empty three "
    "times: the database's fence guard keeps the ledger ordered, nothing is oversold.",
    "5": "Six SIGKILLs of worker pool processes while they run tasks (2 workers x 2 "
    "processes). The main process replaces them and, with `task_reject_on_worker_lost`, "
    "gives the lost task's message back at once: nothing stays pending, in the database "
    "or on the broker, and nothing moves twice.",
    "6": "The broker runs with AOF. It is stopped for 3 s while the whole sale is queued "
    "(no worker yet), then again while the workers are connected and idle. "
    "`submit_order` raises `BrokerUnavailable` while it is down; queued orders survive; "
    "workers reconnect and sell everything.",
    "7": "Every worker connection to PostgreSQL is terminated (`pg_terminate_backend`) "
    "four times, 1.5 s apart, mid-sale. Tasks that meet a dropped connection retry: "
    "nothing is lost or moved twice, no order fails.",
    "8": "A stale lock holder. In process: a fenced lease on HOT lapses while real workers "
    "sell HOT under newer leases; the holder then records an order and settles with its "
    "old fence: the database refuses (`StaleFence`), nothing of it remains, and its order "
    "is decided by the workers. End to end: a whole worker is paused (SIGSTOP of its "
    "process group) for twice the lease TTL, four times.",
    "9": "20,000 orders from four producer threads, 2 workers x 2 processes. Invariants, "
    "and the pool processes' RSS at the end within 50 MB of the start. Throughput is "
    "reported, not asserted.",
    "10": "Network partitions: every worker group reaches each lock node through a link "
    "of its own (a TCP proxy per group and node), so different workers see different "
    "nodes; a partitioned link holds its bytes and delivers them late at the heal. "
    "Sales of 200 orders, 1 s leases. Asymmetric: group A reaches nodes {1, 2} and "
    "group B {2, 3} from a tenth of the sale on; a probe process per group takes the HOT "
    "lock through the group's links next to the workers and records each lease's grant "
    "and release on the monotonic clock with its fence: no two leases may overlap and "
    "fences must rise in grant order. Minority side: a worker cut from nodes 2 and 3 "
    "runs alone first: each order is recorded `pending`, retried 3 times, then ends "
    "`failed` with `lock_unavailable`, and a probe on its side gets no lease; then a "
    "worker with a quorum joins: an order the cut worker recorded is decided by the "
    "lock holder (which settles every pending order within its SKUs) or by a retry "
    "that reaches the other worker, and fails only if neither happens within its "
    "retries. Cut mid-lease: the test takes a fenced lease on HOT, checks it as the "
    "order path does and sends its settlement into a partition of every link (lock "
    "nodes and database); the lease lapses, the workers sell HOT under newer fences, "
    "the links heal and the late settlement is refused by the fence guard, leaving "
    "nothing. Heal: node 2 is cut from everyone, A reaches node 1 only and B node 3 "
    "only, for 2 s; nothing may be decided from one TTL and 0.5 s after the cut (a "
    "lease granted before it may still be used) until the heal; the first "
    "order decided and the first probe lease must come within 2 s of the heal. Control: "
    "node 2, the only node A and B share, is wiped every 30 ms: the lease check must "
    "find overlaps.",
    "11": "The intake record: sales of 300 orders submitted by a web thread, each in its "
    "own PostgreSQL transaction (`submit_order(..., session=...)`), published after the "
    "commit; `celery beat` sends a relay round every second and an open order is a "
    "candidate 5 s after its last publication. Broker killed: the Redis broker (AOF) is "
    "SIGKILLed and restarted on its port and data three times while the workers consume "
    "(a message popped by a worker when the broker dies is lost: its order is still "
    "`accepted` or `pending` in the database). Web link down: the web app reaches the "
    "broker through a link that refuses connections for 180 submissions: every "
    "submission still succeeds. Queue lost: a broker without persistence is restarted "
    "empty with the whole sale queued; the relay must publish each order once, and only "
    "once. Every order must be decided; the time is from the end of the fault until the "
    "last decision.",
}

DECISIONS = """\
## Decisions

- **The broker persists (AOF, `appendfsync always`).** Without persistence a broker
  restart empties the queue: every order only handed to the broker and not yet
  consumed is lost; those taken through the intake record come back through the
  relay (scenario 11), at the cost of `INTAKE_REPUBLISH_AFTER_S` of delay. The
  lock nodes are separate servers and should also run with AOF: the fence counters
  must survive a crash (scenario 4).
- **The database is the correctness layer.** In every scenario the lock was degraded,
  frozen, restarted or outlived, and no scenario oversold or moved stock twice: the
  guarded `UPDATE ... WHERE stock >= total AND fence <= fence` and one movement per
  (order, SKU) hold whatever the lock does.
- **Test nodes for TLS keep a plaintext port** besides `--tls-port`, because
  `RedisServer` checks readiness over plain TCP; the Redlock under test only uses the
  TLS port, and a plain-TCP client on that port gets no lease.

## Known gaps (not in the suite; details in the chaos suite's report to the lead)

- **Orders only handed to the broker can still be lost with it.** kombu's Redis
  transport pops a message (BRPOP) before it records it as unacknowledged; a message
  in flight when the connection drops vanishes (1 order in 2 of 4 runs of 2,000 while
  the broker restarted under consuming workers), and a broker that loses its data
  loses its queue. Orders submitted through the intake record are not lost this way
  (scenario 11: the relay publishes them again); orders sent with `send_task`, or
  `submit_order` without `session`, are as safe as the broker.
- **Release right after a lock node restart does not reach that node.** The stale
  connection fails the release round (`UNCONFIRMED`); with AOF the key then lingers
  on the restarted node for the rest of its TTL.
- **Equal fences after two empty restarts.** With two of three nodes restarted
  empty, a second lease can get the same fence as the first (5 then 5), which the
  guard `fence <= :fence` accepts (a lease must be able to write its SKUs twice);
  only the stock guard protects then. Run the lock nodes with AOF (scenario 4).
"""


def run_suite(json_path: Path, pytest_args: list[str]) -> int:
    """Run tests/chaos writing its records to ``json_path``; return pytest's exit status."""
    env = {**os.environ, "RELIABILITY_REPORT": str(json_path)}
    command = [sys.executable, "-m", "pytest", "tests/chaos", "-q", *pytest_args]
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def render(document: dict[str, Any]) -> str:
    """Return RELIABILITY.md for the records of one run."""
    records = sorted(document["records"], key=lambda row: _number(row["scenario"]))
    machine = document.get("machine", {})
    lines = [
        "# Reliability",
        "",
        "What the flash-sale worker guarantees when its parts fail, measured by the chaos "
        "suite (`tests/chaos`): real `redis-server` lock nodes and broker, real "
        "`celery worker` processes, PostgreSQL. Every sale is checked afterwards: no stock "
        "below zero; per SKU, initial - final stock = confirmed units = ledger; every order "
        "terminal; one movement per line of a confirmed order; no enqueued order missing.",
        "",
        f"Generated by `bench/reliability_report.py` on {document.get('generated_at', '?')}: "
        f"{machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}, "
        f"{machine.get('redis_server', '?')}, {machine.get('postgres', '?')}. "
        f"The chaos suite took {document.get('wall_s', '?')} s.",
        "",
        f"Reproduce: `{COMMAND}` (or `RELIABILITY_REPORT=reliability.json "
        ".venv/bin/python -m pytest tests/chaos`, then "
        "`.venv/bin/python bench/reliability_report.py --json reliability.json`).",
        "",
        *TABLE_HEAD,
    ]
    lines += [_row(record) for record in records if not _hostile(record)]
    lines += [
        "",
        "## Hostile and bad input",
        "",
        "Arbitrary task payloads, raw broker messages that are not ours, and lock nodes "
        "behind TLS, a password or an ACL user (see `tests/chaos/test_hostile_input.py` "
        "and `tests/chaos/test_secured_nodes.py`).",
        "",
        *TABLE_HEAD,
        *[_row(record) for record in records if _hostile(record)],
        "",
    ]
    lines += _metrics([record for record in records if _hostile(record)])
    lines += ["", "## Scenarios", ""]
    for number, text in SCENARIOS.items():
        lines.append(f"**{number}.** {text}")
        lines += _metrics([row for row in records if _number(row["scenario"])[0] == int(number)])
        lines.append("")
    lines.append(DECISIONS)
    return "\n".join(lines)


def _row(record: dict[str, Any]) -> str:
    figures = record.get("figures") or {}
    cells = [f"{figures[key]:,}" if key in figures else "-" for key in FIGURES]
    notes = record.get("notes", "").replace("|", "/")
    test = f"{record.get('outcome', '?')}, {record.get('duration_s', '?')} s"
    number = "" if _hostile(record) else f"{record['scenario'].split('-')[0]}. "
    scenario = f"{number}{record['title']}"
    return "| " + " | ".join([scenario, *cells, notes, test]) + " |"


def _metrics(records: list[dict[str, Any]]) -> list[str]:
    """One bullet per record that has metrics besides its order reasons."""
    return [
        f"- {record['title']}: {_metrics_text(record)}"
        for record in records
        if _metrics_text(record)
    ]


def _metrics_text(record: dict[str, Any]) -> str:
    metrics = {key: value for key, value in record["metrics"].items() if key != "reasons"}
    return "; ".join(f"{key.replace('_', ' ')}: {_short(value)}" for key, value in metrics.items())


def _hostile(record: dict[str, Any]) -> bool:
    return str(record["scenario"]).startswith("H-")


def _short(value: object) -> str:
    if isinstance(value, dict):
        return "/".join(str(item) for item in value.values()) or "-"
    if isinstance(value, list | tuple):
        return "/".join(str(item) for item in value)
    return str(value)


def _number(scenario: str) -> tuple[int, str]:
    match = re.match(r"(\d+)", scenario)
    return (int(match.group(1)) if match else 99, scenario)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--run", action="store_true", help="run tests/chaos first")
    parser.add_argument("--json", type=Path, default=None, help="records of an earlier run")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="default: RELIABILITY.md")
    args, pytest_args = parser.parse_known_args(argv)
    if args.run == (args.json is not None):
        parser.error("give exactly one of --run and --json")
    status = 0
    json_path = args.json
    if args.run:
        json_path = Path(tempfile.gettempdir()) / f"reliability-{int(time.time())}.json"
        status = run_suite(json_path, pytest_args)
        if not json_path.exists():
            print("reliability_report: the chaos suite recorded nothing", file=sys.stderr)
            return status or 1
    assert json_path is not None
    document = json.loads(json_path.read_text())
    args.output.write_text(render(document) + "\n")
    print(f"wrote {args.output} from {json_path} (chaos suite exit status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
