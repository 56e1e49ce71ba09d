"""How much GPU time does modelhost's autoscaler save, and what does it cost in waiting?

Runs each trace through a discrete-event simulation (bench/autoscale_sim.py) four times, with
the real policy code: our policy (modelhost.autoscaler.policy), a Knative-KPA-style policy with
Knative's published defaults (modelhost.autoscaler.kpa), a clairvoyant reference that reads the
trace's future arrivals (bench/autoscale_oracle.py; a yardstick, not a runnable policy), and
static provisioning at the trace's peak. Prints a table and the ratios, and writes
bench/results/autoscale.json.

    .venv/bin/python bench/autoscale.py     # bursty, diurnal, spiky: 2 h each, seeds 1-3
    .venv/bin/python bench/autoscale.py --azure-trace AzureLLMInferenceTrace_conv.csv
    .venv/bin/python bench/autoscale.py --write-azure-sample bench/traces/azure_sample.csv

Goal (issue 4), per trace: ours <= 0.6x static's GPU-hours with p95 queue wait within 2x of
static's, and >= 20% fewer GPU-hours than KPA at equal or better p95 queue wait.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from autoscale_oracle import clairvoyant
from autoscale_sim import (
    Controller,
    ReplicaModel,
    SimResult,
    Simulation,
    peak_replicas,
    percentile,
)
from modelhost.autoscaler import kpa, policy
from modelhost.autoscaler.policy import ScalingContext, ScalingDecision
from modelhost.domain.autoscaling import MAX_INSTANCES_LIMIT, AutoscalingSettings
from traces import SYNTHETIC, Trace, read_azure_trace, write_azure_sample

POLICIES = ("ours", "kpa", "oracle", "static")
# p95 queue waits closer than this count as equal: it is far below one decision interval and
# below what a client can tell apart, and keeps float noise from deciding a comparison.
EQUAL_WAIT_S = 0.05


@dataclass(frozen=True)
class Summary:
    policy: str
    gpu_hours: float
    wait_p50: float
    wait_p95: float
    wait_p99: float
    e2e_p50: float
    e2e_p95: float
    e2e_p99: float
    held_cold: int
    scale_events: int
    replica_starts: int
    max_replicas: int
    requests: int
    # Simulated seconds, from 0 to the later of the trace's end and the last completion.
    end_s: float


def summarize(result: SimResult) -> Summary:
    waits, e2e = result.queue_wait_s, result.e2e_s
    return Summary(
        policy=result.policy,
        gpu_hours=result.gpu_hours,
        wait_p50=percentile(waits, 50),
        wait_p95=percentile(waits, 95),
        wait_p99=percentile(waits, 99),
        e2e_p50=percentile(e2e, 50),
        e2e_p95=percentile(e2e, 95),
        e2e_p99=percentile(e2e, 99),
        held_cold=result.held_cold,
        scale_events=result.scale_ups + result.scale_downs,
        replica_starts=result.replica_starts,
        max_replicas=result.max_replicas,
        requests=len(waits),
        end_s=result.end_s,
    )


def _static(count: int) -> Controller[int]:
    def decide(context: ScalingContext, state: int) -> tuple[ScalingDecision, int]:
        return ScalingDecision(state, f"static at peak: {state}"), state

    return Controller("static", decide, count)


def run_trace(
    trace: Trace,
    seed: int | None,
    model: ReplicaModel,
    settings: AutoscalingSettings,
    decision_interval_s: float,
    max_instances: int | None,
) -> dict[str, Any]:
    peak = peak_replicas(trace, model)
    bounds = replace(settings, max_instances=max_instances or min(MAX_INSTANCES_LIMIT, 2 * peak))
    runs: list[tuple[Controller[Any], int]] = [
        (Controller("ours", policy.decide, policy.PolicyState()), bounds.min_instances),
        (Controller("kpa", kpa.decide, kpa.KpaState()), bounds.min_instances),
        (clairvoyant(trace, model, decision_interval_s), bounds.min_instances),
        (_static(peak), peak),
    ]
    summaries: dict[str, Summary] = {}
    for controller, initial in runs:
        simulation = Simulation(
            trace, controller, model, bounds, decision_interval_s, initial, controller.name
        )
        summaries[controller.name] = summarize(simulation.run())
    return {
        "trace": trace.name,
        "seed": seed,
        "requests": len(trace.requests),
        "duration_h": trace.duration_s / 3600.0,
        "static_replicas": peak,
        "max_instances": bounds.max_instances,
        "results": {name: asdict(summary) for name, summary in summaries.items()},
        **verdict(summaries),
    }


def _wait_within(ours: float, limit: float) -> bool:
    return ours <= limit + EQUAL_WAIT_S


def verdict(summaries: dict[str, Summary]) -> dict[str, Any]:
    ours, kpa_run, static = summaries["ours"], summaries["kpa"], summaries["static"]
    vs_static = ours.gpu_hours / static.gpu_hours
    vs_kpa = ours.gpu_hours / kpa_run.gpu_hours
    # The clairvoyant reference: how far below KPA knowing the future would get.
    oracle_vs_kpa = summaries["oracle"].gpu_hours / kpa_run.gpu_hours
    static_goal = vs_static <= 0.6 and _wait_within(ours.wait_p95, 2 * static.wait_p95)
    kpa_goal = vs_kpa <= 0.8 and _wait_within(ours.wait_p95, kpa_run.wait_p95)
    return {
        "gpu_hours_ours_over_static": vs_static,
        "gpu_hours_ours_over_kpa": vs_kpa,
        "gpu_hours_oracle_over_kpa": oracle_vs_kpa,
        "goal_vs_static": static_goal,
        "goal_vs_kpa": kpa_goal,
    }


def _label(entry: dict[str, Any]) -> str:
    return entry["trace"] if entry["seed"] is None else f"{entry['trace']}#{entry['seed']}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return lines + [_row(row, widths) for row in rows]


def medians(report: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trace, the median ratios over seeds and in how many seeds each goal was met."""
    names = list(dict.fromkeys(e["trace"] for e in report))
    out = []
    for name in names:
        runs = [e for e in report if e["trace"] == name]
        out.append(
            {
                "trace": name,
                "runs": len(runs),
                "gpu_hours_ours_over_static": statistics.median(
                    e["gpu_hours_ours_over_static"] for e in runs
                ),
                "gpu_hours_ours_over_kpa": statistics.median(
                    e["gpu_hours_ours_over_kpa"] for e in runs
                ),
                "gpu_hours_oracle_over_kpa": statistics.median(
                    e["gpu_hours_oracle_over_kpa"] for e in runs
                ),
                "goal_vs_static_met": sum(e["goal_vs_static"] for e in runs),
                "goal_vs_kpa_met": sum(e["goal_vs_kpa"] for e in runs),
            }
        )
    return out


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def render(report: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (what docs/performance.md shows) plus the ratios."""
    header = (
        "trace",
        "policy",
        "GPU-h",
        "wait p50/p95/p99 s",
        "e2e p50/p95/p99 s",
        "held cold",
        "scale events",
        "max repl.",
    )
    rows: list[tuple[str, ...]] = []
    for entry in report:
        for name in POLICIES:
            r = entry["results"][name]
            label = f"static ({entry['static_replicas']})" if name == "static" else name
            rows.append(
                (
                    _label(entry),
                    label,
                    f"{r['gpu_hours']:.2f}",
                    f"{r['wait_p50']:.2f} / {r['wait_p95']:.2f} / {r['wait_p99']:.2f}",
                    f"{r['e2e_p50']:.1f} / {r['e2e_p95']:.1f} / {r['e2e_p99']:.1f}",
                    str(r["held_cold"]),
                    str(r["scale_events"]),
                    str(r["max_replicas"]),
                )
            )
    lines = [*_table(header, rows), ""]
    ratio_header = (
        "trace",
        "ours/static GPU-h",
        "ours/KPA GPU-h",
        "oracle/KPA GPU-h",
        "p95 wait ours / KPA / oracle / static s",
        "≤0.6x static, p95 ≤2x",
        "≤0.8x KPA, p95 ≤",
    )
    ratio_rows = [
        (
            _label(e),
            f"{e['gpu_hours_ours_over_static']:.2f}",
            f"{e['gpu_hours_ours_over_kpa']:.2f}",
            f"{e['gpu_hours_oracle_over_kpa']:.2f}",
            " / ".join(f"{e['results'][p]['wait_p95']:.2f}" for p in POLICIES),
            "met" if e["goal_vs_static"] else "MISSED",
            "met" if e["goal_vs_kpa"] else "MISSED",
        )
        for e in report
    ]
    lines += _table(ratio_header, ratio_rows)
    summary = medians(report)
    if any(m["runs"] > 1 for m in summary):
        lines.append("")
        lines += _table(
            (
                "trace",
                "median ours/static",
                "median ours/KPA",
                "median oracle/KPA",
                "static goal",
                "KPA goal",
            ),
            [
                (
                    m["trace"],
                    f"{m['gpu_hours_ours_over_static']:.2f}",
                    f"{m['gpu_hours_ours_over_kpa']:.2f}",
                    f"{m['gpu_hours_oracle_over_kpa']:.2f}",
                    f"met {m['goal_vs_static_met']}/{m['runs']}",
                    f"met {m['goal_vs_kpa_met']}/{m['runs']}",
                )
                for m in summary
            ],
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", default="bursty,diurnal,spiky", help="synthetic traces")
    parser.add_argument("--hours", type=float, default=2.0, help="length of synthetic traces")
    parser.add_argument("--peak-rps", type=float, default=25.0, help="synthetic peak rate")
    parser.add_argument("--seeds", default="1,2,3", help="one run of each synthetic trace each")
    parser.add_argument("--azure-trace", type=Path, action="append", default=[])
    parser.add_argument("--write-azure-sample", type=Path, help="write a sample CSV and exit")
    parser.add_argument("--cold-start-s", type=float, default=20.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--tpot-s", type=float, default=0.02, help="step time at batch 1")
    parser.add_argument("--decision-interval-s", type=float, default=2.0)
    parser.add_argument("--min-instances", type=int, default=0)
    parser.add_argument(
        "--max-instances", type=int, help="default: twice the static peak (at most 64)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/autoscale.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_azure_sample:
        trace = write_azure_sample(args.write_azure_sample)
        print(f"wrote {len(trace.requests)} requests to {args.write_azure_sample}")
        return 0
    model = ReplicaModel(
        max_batch_size=args.max_batch_size, cold_start_s=args.cold_start_s, tpot_base_s=args.tpot_s
    )
    settings = AutoscalingSettings(min_instances=args.min_instances)
    seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    runs: list[tuple[Trace, int | None]] = [
        (SYNTHETIC[name](seed, args.hours * 3600.0, args.peak_rps), seed)
        for name in args.traces.split(",")
        if name
        for seed in seeds
    ]
    runs += [(read_azure_trace(path), None) for path in args.azure_trace]
    started = time.perf_counter()
    report = [
        run_trace(t, seed, model, settings, args.decision_interval_s, args.max_instances)
        for t, seed in runs
    ]
    print(render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "model": asdict(model),
        "settings_ours": asdict(settings),
        "kpa": asdict(kpa.KNATIVE_DEFAULTS),
        "decision_interval_s": args.decision_interval_s,
        "seeds": seeds,
        "hours": args.hours,
        "peak_rps": args.peak_rps,
        "wall_s": time.perf_counter() - started,
        "traces": report,
        "medians": medians(report),
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out} ({document['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
