"""compare.png and sweep.png: the compare's rows drawn with matplotlib (the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

from come.card import display_name


def plot(result: dict, path: Path) -> None:
    """Bars of perplexity (log scale) and average accuracy per method; the dense model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "error" not in r]
    panels = [k for k in ("ppl", "averages") if k in rows[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6, 0.6 * len(rows)) * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        names = [r["method"] for r in rows[1:]]
        if key == "ppl":
            vals = [r["ppl"]["ppl"] for r in rows[1:]]
            ax.set_yscale("log")
            ax.set_ylabel("perplexity (log)")
            ax.axhline(rows[0]["ppl"]["ppl"], color="k", ls="--", lw=1, label="dense")
        else:
            vals = [100 * r["averages"]["acc"] for r in rows[1:]]
            ax.set_ylabel("average accuracy (%)")
            ax.axhline(100 * rows[0]["averages"]["acc"], color="k", ls="--", lw=1, label="dense")
        ax.bar(names, vals, color="tab:blue")
        ax.tick_params(axis="x", rotation=45)
        ax.legend()
    fig.suptitle(f"{display_name(result['settings']['model'])} -> {result['settings']['target_layers_resolved']} "
                 "layers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(result: dict, path: Path) -> None:
    """Perplexity and average accuracy against the number of layers removed, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "error" not in r]
    dense = rows[0]
    panels = [k for k in ("ppl", "averages") if k in dense]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    value = {"ppl": lambda r: r["ppl"]["ppl"], "averages": lambda r: 100 * r["averages"]["acc"]}
    for ax, key in zip(axes[0], panels):
        for row in rows[1:]:
            pts = sorted([dense, *row.get("sweep", []), row], key=lambda r: -r["layers"])
            ax.plot([dense["layers"] - p["layers"] for p in pts], [value[key](p) for p in pts], marker="o",
                    ms=3, label=row["method"])
        ax.set_xlabel("layers removed")
        ax.set_ylabel("perplexity (log)" if key == "ppl" else "average accuracy (%)")
        if key == "ppl":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
