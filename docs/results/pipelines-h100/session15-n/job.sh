# session 15: wordnet-minilm-gpu-l2 (recipe J) + augment {examples 0.5, mask 0.15} in distill and prune recovery
# (variant N), seeds 0, 1, 2 at once
. /tmp/jobs/env.sh
export OMP_NUM_THREADS=2
cd /tmp/snap
mkdir -p /tmp/s8
for s in 0 1 2; do
  python3 - $s <<'PY'
import sys, yaml
s = int(sys.argv[1])
d = yaml.safe_load(open("pipelines/wordnet-minilm-gpu-l2.yaml"))
d["seed"] = s
aug = {"examples": 0.5, "mask": 0.15}
for st in d["stages"]:
    if "distill" in st:
        st["distill"]["augment"] = aug
    if "prune" in st:
        st["prune"]["recover"]["augment"] = aug
open(f"/tmp/s8/l2aug-seed{s}.yaml", "w").write(yaml.safe_dump(d, sort_keys=False))
PY
  (python3 -m compress run /tmp/s8/l2aug-seed$s.yaml --run-dir /tmp/s8/run$s --deploy-dir deploy --quiet > /tmp/s8/seed$s.log 2>&1; echo "seed $s rc $?" >> /tmp/s8/seed$s.log) &
done
wait
echo done > /tmp/s8/done
