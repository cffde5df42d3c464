# session 14: wordnet-minilm-gpu-l2 (recipe J) with seeds 0, 1, 2 at once, then seed 0's validate stage alone
. /tmp/jobs/env.sh
export OMP_NUM_THREADS=2
cd /tmp/snap
mkdir -p /tmp/seeds
for s in 0 1 2; do
  sed "s/^seed: 0$/seed: $s/" pipelines/wordnet-minilm-gpu-l2.yaml > /tmp/seeds/l2-seed$s.yaml
  grep -q "^seed: $s$" /tmp/seeds/l2-seed$s.yaml || echo "seed edit failed for $s"
  (python3 -m compress run /tmp/seeds/l2-seed$s.yaml --run-dir /tmp/seeds/run$s --deploy-dir deploy --quiet > /tmp/seeds/seed$s.log 2>&1; echo "seed $s rc $?" >> /tmp/seeds/seed$s.log) &
done
wait
echo trained > /tmp/seeds/trained
mkdir -p /tmp/seeds/reval0 && cp -r /tmp/seeds/run0 /tmp/seeds/reval0/run && rm -rf /tmp/seeds/reval0/run/stages/*validate*
python3 -m compress run /tmp/seeds/l2-seed0.yaml --run-dir /tmp/seeds/reval0/run --deploy-dir deploy --quiet > /tmp/seeds/reval0.log 2>&1; echo "reval rc $?" >> /tmp/seeds/reval0.log
echo all-done > /tmp/seeds/done
