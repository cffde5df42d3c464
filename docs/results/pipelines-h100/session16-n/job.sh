# next session: pipelines/wordnet-minilm-gpu-l2.yaml as shipped (recipe N), seeds 3, 4, 5 at once: the drop over 6 splits
. /tmp/jobs/env.sh
export OMP_NUM_THREADS=2
cd /tmp/snap
mkdir -p /tmp/s9
for s in 3 4 5; do
  python3 - $s <<'PY'
import sys, yaml
s = int(sys.argv[1])
d = yaml.safe_load(open("pipelines/wordnet-minilm-gpu-l2.yaml"))
d["seed"] = s
open(f"/tmp/s9/l2aug-seed{s}.yaml", "w").write(yaml.safe_dump(d, sort_keys=False))
PY
  (python3 -m compress run /tmp/s9/l2aug-seed$s.yaml --run-dir /tmp/s9/run$s --deploy-dir deploy --quiet > /tmp/s9/seed$s.log 2>&1; echo "seed $s rc $?" >> /tmp/s9/seed$s.log) &
done
wait
echo done > /tmp/s9/done
