#!/usr/bin/env python3
"""Draws lab/bench/run's ratios as an SVG with matplotlib: one bar per
system and workload, the ratio of its median to plain routing's median,
whiskers from the min to the max repetition, a line at 1.0 (routing).
Throughput-like workloads (higher is better) on the left, round trips
(lower is better) on the right.

  chart.py results.json ratios.svg
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def main():
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    systems = [(k, e) for k, e in doc["systems"].items() if k != "routing" and "skipped" not in e]
    groups = [("higher is better", [w for w in doc["workloads"] if w["better"] == "high"]),
              ("lower is better", [w for w in doc["workloads"] if w["better"] == "low"])]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [3, 1.3]})
    width = 0.8 / max(1, len(systems))
    for ax, (title, wls) in zip(axes, groups):
        for i, (_, e) in enumerate(systems):
            ys, xs, lo, hi = [], [], [], []
            for j, w in enumerate(wls):
                r = e.get(w["key"], {}).get("ratio")
                if not r:
                    continue
                ys.append(j + (i - (len(systems) - 1) / 2) * width)
                xs.append(r["median"])
                lo.append(r["median"] - r["min"])
                hi.append(r["max"] - r["median"])
            ax.barh(ys, xs, height=width, xerr=[lo, hi], capsize=2, label=e["label"], color="C%d" % i)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(wls)))
        ax.set_yticklabels([w["label"] for w in wls], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ratio to plain routing (%s)" % title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8)
    m = doc["machine"]
    fig.suptitle("ftpgate benchmark %s: %d cores, Linux %s, median of %d repetitions (whiskers: min-max)"
                 % (m["date"], m["cores"], m["kernel"], m["reps_done"]), fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(sys.argv[2], format=sys.argv[2].rsplit(".", 1)[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
