#!/usr/bin/env bash
# make demo: the whole pipeline on built-in data, from a fresh clone, in a few minutes on 2 CPU cores:
#   gal-sim -> gal-train -> gal-embed -> gal-knn montage -> gal-photoz -> gal-ood -> gal-classify -> gal-map
# Usage: examples/demo.sh [OUTPUT_FOLDER]   (STEPS=..., N_TRAIN=..., N_TARGET=... to change the size)
set -euo pipefail
out=${1:-demo-output}
steps=${STEPS:-150}
n_train=${N_TRAIN:-2000}
n_target=${N_TARGET:-1000}
mkdir -p "$out"
cd "$out"
say() { printf '\n== %s\n' "$*"; }
start=$(date +%s)

say "1. simulate $n_train labelled galaxies and $n_target survey galaxies (5% anomalies) with gal-sim"
gal-sim -n "$n_train" --seed 1 -o train.parquet --montage sim.png --overwrite
gal-sim -n "$n_target" --seed 2 --anomaly-fraction 0.05 -o target.parquet --overwrite
gal-info target.parquet | head -3

say "2. self-supervised pre-training (gal-train --preset small, $steps steps on the CPU)"
# the small preset (a short run on a small table: see gal-train --help), shortened for the demo: a key encoder
# that follows within ~50 steps suits a run this short, and one view per cutout keeps gal-embed fast (the
# preset's --tta 8 costs 8 times the embedding time)
gal-train train.parquet --out run --preset small --steps "$steps" --key-momentum 0.98 --tta 1 --device cpu \
  --monitor-label morph_class --checkpoint-every 1000 --overwrite

say "3. embed both tables with the exported encoder (ONNX Runtime, no torch)"
gal-embed train.parquet --model run/encoder.onnx -o train-emb.parquet --overwrite
gal-embed target.parquet --model run/encoder.onnx -o target-emb.parquet --overwrite

say "4. similarity search: the neighbors of three survey galaxies"
query_ids=$(python3 -c "import pyarrow.parquet as pq; t=pq.read_table('target.parquet', columns=['object_id','morph_class','is_anomaly']); \
import itertools; rows=[r for r in t.to_pylist() if not r['is_anomaly']]; \
seen={}; [seen.setdefault(r['morph_class'], r['object_id']) for r in rows]; print(' '.join(f'--query {v}' for v in list(seen.values())[:3]))")
gal-knn target-emb.parquet $query_ids -k 6 --montage similar.png --images target.parquet --label morph_class -o neighbors.parquet --overwrite

say "5. photometric redshifts: linear probe on the labelled embeddings, predicted for the survey"
gal-photoz fit train-emb.parquet --z-column z_true --label-smoothing 2 -o photoz.model --overwrite
gal-photoz predict target-emb.parquet --model photoz.model --truth z_true -o target-photoz.parquet --overwrite
gal-photoz eval target-photoz.parquet --truth z_true --plot photoz.png --overwrite

say "6. which predictions to trust: distance to the labelled set"
gal-ood fit train-emb.parquet -k 10 -o ood.model --overwrite
gal-ood score target-photoz.parquet --model ood.model -o target-scored.parquet --overwrite
gal-ood eval target-scored.parquet --truth is_anomaly --error-column abs_dz --plot ood.png --overwrite

say "7. morphology from the representation"
gal-classify fit train-emb.parquet --label morph_class --classes elliptical,disk,edge_on -o morph.model --overwrite
gal-classify predict target-emb.parquet --model morph.model -o target-morph.parquet --overwrite
gal-classify eval target-morph.parquet --plot morph.png --overwrite

say "8. a map of the representation, coloured by redshift, and tiled with the galaxies"
gal-map target-emb.parquet --method pca --color z_true --plot map-z.png --images target.parquet --tiles map-tiles.png \
  -o map.parquet --overwrite

say "done in $(( $(date +%s) - start )) s. Pictures and tables in $(pwd):"
ls -1 *.png *.parquet run/encoder.onnx run/training.png | sed 's/^/  /'
say "to look at the representation in a browser (search, map, filters; Ctrl-C to stop):"
echo "  gal-view $(pwd)/target-emb.parquet --images $(pwd)/target.parquet --map $(pwd)/map.parquet --label morph_class --columns z_true,mag_r --open"
