"""Write examples/results/README.md from the JSON the commands of examples/Makefile printed (no number typed in).

    python3 report.py RESULTS WORK SCALE "all no-rotate ..."
"""
from __future__ import annotations

import json
import os
import sys


def load(path: str):
    with open(path) as handle:
        return json.load(handle)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def capped(rows: list[dict]) -> list[str]:
    """The arms that hit their epoch cap somewhere on a curve: no conclusion may be drawn from them."""
    return sorted({r["method"] for r in rows if r.get("stopped") == "cap"})


def refusal(rows: list[dict]) -> str:
    arms = capped(rows)
    if not arms:
        return ("Every training arm stopped by patience (the `stopped` column), so the arms are compared at "
                "convergence.\n\n")
    return (f"**No conclusion is drawn from {', '.join(f'`{a}`' for a in arms)}: it hit its epoch cap "
            "(`stopped` = cap) at least once, so it had not converged.**\n\n")


def method(row: dict) -> str:
    """The arm's name; the pixel baseline also says how many principal components it chose by validation."""
    return f"{row['method']} ({row['components']})" if "components" in row else row["method"]


def photoz_curve(results: str) -> str:
    curve = load(os.path.join(results, "photoz-curve.json"))
    rows = [[method(r), r["n_labels"], r["n_test"], f"{r['sigma_mad']:.4f}", f"{r['eta']:.1f}", f"{r['bias']:+.4f}",
             r.get("stopped") or "-", r.get("epochs") if r.get("stopped") else "-"]
            for r in curve["rows"]]
    return ("## 1. Photometric redshifts against the number of labels\n\n"
            "`gal-photoz curve train-emb.parquet --z-column z_true --fractions ... --images train.parquet --checkpoint\n"
            "full/last.pt`: one fixed test set, nested subsets of labels; `median` predicts the training median for every\n"
            "object, `linear` is the linear probe on the frozen pre-trained representation, `pixels-pca` the same probe on\n"
            "the cutouts' pixels (PCA fitted without labels; in brackets the number of components, chosen by validation\n"
            "loss), `random-encoder` the same probe on the architecture with random weights, `finetune` fine-tunes the\n"
            "pre-trained encoder end to end, `scratch` trains the same network from random weights. Every arm stops by\n"
            "the same patience rule.\n\n"
            + refusal(curve["rows"])
            + table(["method", "labels", "test objects", "sigma_MAD", "eta (%)", "bias", "stopped", "epochs"], rows)
            + "\n\n![photo-z label curve](photoz-curve.png)\n")


def photoz_and_trust(results: str) -> str:
    photoz = load(os.path.join(results, "photoz.json"))
    ood = load(os.path.join(results, "ood.json"))
    detection, trust = ood["detection"], ood["trust"]
    text = ("## 4. Photo-z on the survey sample, and which predictions to trust\n\n"
            "`gal-photoz predict target-emb.parquet --truth z_true | gal-photoz eval` and `gal-ood fit train-emb.parquet`,\n"
            "`gal-ood score`, `gal-ood eval --truth is_anomaly --error-column abs_dz`.\n\n"
            + table(["N", "sigma_MAD", "eta (%)", "bias"],
                    [[photoz["n"], f"{photoz['sigma_mad']:.4f}", f"{photoz['eta']:.1f}", f"{photoz['bias']:+.4f}"]])
            + "\n\nAnomaly detection by distance to the labelled set: "
            f"AUROC {detection['auroc']:.3f}, average precision {detection['average_precision']:.3f} "
            f"(anomaly fraction {detection['anomaly_fraction']:.3f}), TPR at {detection['fpr']:.0%} FPR "
            f"{detection['tpr_at_fpr']:.3f}.\n\n")
    if "trusted" in trust and "untrusted" in trust:
        text += table(["", "N", "median abs(dz)", "mean abs(dz)"],
                      [[name, trust[name]["n"], f"{trust[name]['median_error']:.4f}", f"{trust[name]['mean_error']:.4f}"]
                       for name in ("trusted", "untrusted")])
        text += "\n"
    text += "\n![trust curve](ood.png)\n\n![photo-z](photoz.png)\n\n![strangest objects](strangest.png)\n"
    return text


def morphology(results: str) -> str:
    morph = load(os.path.join(results, "morph.json"))
    rows = [[c["class"], c["support"], f"{c['precision']:.3f}", f"{c['recall']:.3f}"] for c in morph["per_class"]]
    return ("## Morphology from the representation (simulated classes)\n\n"
            f"`gal-classify fit/predict/eval`: accuracy {morph['accuracy']:.3f}, balanced accuracy "
            f"{morph['balanced_accuracy']:.3f} on {morph['n']} survey objects.\n\n"
            + table(["class", "support", "precision", "recall"], rows) + "\n\n![confusion](morph.png)\n")


def ablation(work: str, names: list[str]) -> str:
    rows = []
    for name in names:
        folder = os.path.join(work, "ablation", name)
        photoz, morph = load(os.path.join(folder, "photoz.json")), load(os.path.join(folder, "morph.json"))
        ops = load(os.path.join(folder, "result.json"))["ops"]
        rows.append([name, f"`{ops}`", f"{photoz['sigma_mad']:.4f}", f"{photoz['eta']:.1f}", f"{morph['accuracy']:.3f}"])
    return ("## 2. Augmentation ablation (each augmentation removed in turn)\n\n"
            "The same `gal-train` run with `--ops` minus one operation; linear probes on the frozen embeddings.\n\n"
            + table(["run", "augmentations", "photo-z sigma_MAD", "eta (%)", "morphology accuracy"], rows) + "\n")


def pictures() -> str:
    return ("## 3. Similarity search and maps of the representation\n\n"
            "`gal-knn target-emb.parquet --query ... --montage`, `gal-map --method umap --color z_true --tiles`.\n\n"
            "![similar galaxies](similar.png)\n\n![map coloured by redshift](map-z.png)\n\n"
            "![map coloured by class](map-class.png)\n\n![tiled map](map-tiles.png)\n\n![training](training.png)\n")


def gz1(results: str) -> str:
    if not os.path.exists(os.path.join(results, "gz1-flip.json")):
        return ("## 5. Real SDSS images\n\nSkipped: no Galaxy Zoo 1 folder was given (`make -C examples GZ1=DIR`, "
                "DIR holding labels.csv and images/).\n")
    rows, curves = [], []
    for variant in ("noflip", "flip"):
        morph = load(os.path.join(results, f"gz1-{variant}-morph.json"))
        chirality = load(os.path.join(results, f"gz1-{variant}.json"))
        best = [r for r in morph["rows"] if r["method"] == "linear"][-1]
        spin = [r for r in chirality["rows"] if r["method"] == "linear"][-1]
        majority = [r for r in chirality["rows"] if r["method"] == "majority"][-1]
        curves += morph["rows"] + chirality["rows"]
        rows.append([variant, best["n_labels"], f"{best['accuracy']:.3f}", f"{best['balanced_accuracy']:.3f}",
                     f"{spin['accuracy']:.3f}", f"{majority['accuracy']:.3f}"])
    return ("## 5. Real SDSS images (Galaxy Zoo 1 sample, gri composites)\n\n"
            "Pre-trained on the 1,500 images with and without mirror flips; linear probes with `gal-classify curve`\n"
            "(4 classes: elliptical / spiral / edge-on / merger; and clockwise vs anticlockwise spirals).\n\n"
            + refusal(curves) + table(["pre-training", "labels", "4-class accuracy", "balanced", "clockwise vs anticlockwise",
                     "majority class"], rows) + "\n\n" + gz1_baselines(results))


def gz1_baselines(results: str) -> str:
    """The 4-class curve of the run without flips, every arm: the probe beside its baselines."""
    curve = load(os.path.join(results, "gz1-noflip-morph.json"))["rows"]
    rows = [[method(r), r["n_labels"], f"{r['accuracy']:.3f}", f"{r['balanced_accuracy']:.3f}",
             r.get("stopped") or "-", r.get("epochs") if r.get("stopped") else "-"]
            for r in sorted(curve, key=lambda r: (r["n_labels"], r["method"]))]
    return ("The run without flips, every arm of `gal-classify curve --images gz1.parquet --checkpoint last.pt` on\n"
            "the same test set: `linear` (the probe on the learned representation), `pixels-pca` and `random-encoder`\n"
            "(the same probe on pixels, with the number of principal components chosen by validation loss, and on\n"
            "random weights), `finetune`, `scratch` and `majority`.\n\n"
            + table(["method", "labels", "accuracy", "balanced", "stopped", "epochs"], rows) + "\n")


def main(results: str, work: str, scale: str, ablation_names: str) -> None:
    print(f"# galtools examples: the experiments of Hayat et al. 2021 and Stein et al. 2021 at {scale} scale\n")
    print("Made by `make -C examples" + ("" if scale == "small" else f" SCALE={scale}") + "`; every number below was "
          "written by `report.py` from the JSON the commands printed.\n")
    for section in (photoz_curve(results), ablation(work, ablation_names.split()), pictures(), photoz_and_trust(results),
                    morphology(results), gz1(results)):
        print(section)


if __name__ == "__main__":
    main(*sys.argv[1:5])
