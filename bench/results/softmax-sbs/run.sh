#!/usr/bin/env bash
# How bench/results/softmax-sbs/ was measured: the layout side-by-side (`bench train` rows b and c, channels-last,
# alternating, two rounds, one thread each, the machine otherwise idle) at the commit before `channel_softmax`
# (4647b09) and the one that added it (60e30dd), for the two methods whose discriminators read a softmax map.
set -euo pipefail
OLD=4647b09 NEW=60e30dd OUT_DIR=bench/results/softmax-sbs RECIPES="demo semi_demo_advsemiseg" \
  exec bash "$(dirname "$0")/../layout-sbs/run.sh"
