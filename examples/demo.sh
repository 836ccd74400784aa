#!/usr/bin/env bash
# make demo: the main job on built-in data, from a fresh clone. Each tool's issue extends this script.
set -euo pipefail
out=${1:-demo-output}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
shared="$here/../shared/data/gz1-sdss"

if [ -f "$shared/labels.csv" ]; then
  echo "== packing the real SDSS galaxies of $shared"
  gal-pack "$shared/labels.csv" --crop 212 --resize 64 --bands i,r,g -o "$out/gz1.fits" --overwrite
  gal-info "$out/gz1.fits"
else
  echo "(no ../shared/data/gz1-sdss here: skipping the real-image part of the demo)"
fi
echo "== done: outputs are in $out/"
