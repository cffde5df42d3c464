# session 13: wordnet-minilm-gpu-l2 with seeds 1, 2, 3 at once on one GPU (accuracy spread; timings not clean)
. /tmp/jobs/env.sh
cd /tmp/snap
mkdir -p /tmp/seeds
for s in 1 2 3; do
  sed "s/^seed: 0$/seed: $s/" pipelines/wordnet-minilm-gpu-l2.yaml > /tmp/seeds/l2-seed$s.yaml
  grep -q "^seed: $s$" /tmp/seeds/l2-seed$s.yaml || echo "seed edit failed for $s"
  (python3 -m compress run /tmp/seeds/l2-seed$s.yaml --run-dir /tmp/seeds/run$s --deploy-dir deploy --quiet > /tmp/seeds/seed$s.log 2>&1; echo "seed $s rc $?" >> /tmp/seeds/seed$s.log) &
done
wait
echo all-done > /tmp/seeds/done
