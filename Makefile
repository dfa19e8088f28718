# The two commands of the README: `make demo` and `make test`. Each sets up .venv first.
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/python train.py --recipe recipes/cpu-demo.yaml

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	EXTRAS=test,sagemaker,mlflow,bench bash scripts/setup.sh
	.venv/bin/python -m bench.run --workload a b
