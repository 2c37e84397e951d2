# Two entry points (see README): `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DATA    ?= data/default
STAMP   := $(VENV)/.installed

.PHONY: demo test venv clean-data

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

# torch first, from the CPU wheel on disk, so nothing pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# the demo's service port: a free one unless given (make demo PORT=8000)
ifeq ($(origin PORT), undefined)
PORT    := $(shell $(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
endif
URL     := http://127.0.0.1:$(PORT)
CROP    := import io, sys, skimage.data; from PIL import Image; b = io.BytesIO(); \
           Image.fromarray(skimage.data.astronaut()[100:164, 100:164]).save(b, "PNG"); sys.stdout.buffer.write(b.getvalue())

# ends by starting the HTTP service (docs/SERVE.md), calling /compress and /encode once, stopping it
demo: $(STAMP)
	@$(BIN)/python -c 'import socket; socket.create_server(("127.0.0.1", $(PORT))).close()' 2>/dev/null || \
	  { echo "[demo] port $(PORT) is taken by another process: make demo PORT=<a free port>"; exit 1; }
	$(BIN)/tinycompress demo --out $(DATA)
	@echo "[demo] starting tinycompress serve on $(URL)"
	@$(BIN)/tinycompress serve --port $(PORT) & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid' EXIT; \
	for i in $$(seq 300); do \
	  kill -0 $$pid 2>/dev/null || { echo "[demo] the service did not start"; exit 1; }; \
	  curl -sf $(URL)/healthz >/dev/null && break; sleep 0.5; done; \
	curl -sf $(URL)/version | $(BIN)/python -c 'import json, sys; assert "tinycompress" in json.load(sys.stdin)' || \
	  { echo "[demo] $(URL) is not answered by tinycompress"; exit 1; }; \
	kill -0 $$pid 2>/dev/null || { echo "[demo] the service stopped"; exit 1; }; \
	echo "[demo] POST /compress"; \
	curl -sSf $(URL)/compress -H 'content-type: application/json' \
	  -d '{"intent": "Please check contract rule 3 while building, and make sure invariant 5 holds. Thanks!"}' \
	  | $(BIN)/python -c 'import json, sys; r = json.load(sys.stdin); r.pop("report"); print(json.dumps(r))' && \
	echo "[demo] POST /encode (a 64x64 crop of skimage astronaut)" && \
	$(BIN)/python -c '$(CROP)' | curl -sSf $(URL)/encode -H 'content-type: image/png' --data-binary @- \
	  | $(BIN)/python -c 'import json, sys; r = json.load(sys.stdin); r["latent"] = r["latent"][:4] + ["..."]; print(json.dumps(r))'

# the suite on two pytest workers (a test module stays on one), then the tests that bound a wall
# time alone; either part collecting nothing (pytest's exit 5) is a failure
PYTEST  := $(BIN)/python -X faulthandler -m pytest -q -p no:cacheprovider
test: $(STAMP)
	$(PYTEST) -n 2 --dist loadfile -m "not serial" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=1; fi; \
	$(PYTEST) -m serial tests; rc2=$$?; \
	if [ $$rc2 -eq 5 ]; then echo "pytest collected no serial tests"; rc2=1; fi; \
	[ $$rc -eq 0 ] && [ $$rc2 -eq 0 ]

clean-data:
	rm -rf data
