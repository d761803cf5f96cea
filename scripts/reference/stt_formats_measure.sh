#!/bin/bash
# Time and peak RSS of sotad transcribe per LibriVox clip (3 runs each); usage: stt_formats_measure.sh MODEL QUANT_ENCODER(true|false)
S=${SOTAD_BIN:-target/release/sotad}; D=$HOME/.cache/sotad/models/speech/librivox
for f in $D/*.wav; do
  for r in 1 2 3; do
    /usr/bin/time -f "maxrss_kb=%M" env SOTAD__STT__THREADS=2 SOTAD__STT__MODEL=$1 SOTAD__STT__QUANTIZED_ENCODER=$2 SOTAD__MODELS__DIR=$HOME/.cache/sotad/models $S transcribe --json $f 2>&1 | python3 -c "
import sys,json,re
t=sys.stdin.read(); rss=re.search(r'maxrss_kb=(\d+)',t).group(1); j=json.loads(t[t.index('{'):t.rindex('}')+1])
tm=j['timings']; print('$(basename $f .wav)'[-4:], round(tm['total_ms'],1), rss)"
  done
done
