python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .device/tao/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
echo "code at $(cat .device/jobs/head)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, torchao; print('torch', torch.__version__, 'torchao', torchao.__version__)"
set -o pipefail
timeout 540 python3 -m pytest -q -p no:cacheprovider tests/gpu tests/unit/models/test_fused_qkv.py tests/unit/models/test_first_token.py tests/unit/bench tests/unit/runtime tests/unit/report -o faulthandler_timeout=500 2>&1 | tee $OUT/gpu-tests.log
echo "rc $?" | tee -a $OUT/gpu-tests.log
