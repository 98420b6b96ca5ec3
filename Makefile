# The two commands of the README.
.PHONY: run test bench

run:            ## run the gateway (local Kafka broker too, where Java is installed)
	scripts/run

test:           ## install everything the tests need, then run the whole suite
	scripts/bootstrap test
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

bench:          ## the webhook and SMTP benchmark against the real broker
	scripts/bootstrap test
	.venv/bin/python bench/intake_bench.py
