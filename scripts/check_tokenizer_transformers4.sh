#!/usr/bin/env bash
# Manual check: a tokenizer folder written by `lucie tokenizer export` loads faithfully with transformers 4.x.
#
# Usage: scripts/check_tokenizer_transformers4.sh [SRC] [PIP_SPEC]
#   SRC       tokenizer folder or Hub id to export (default: ../shared/lucie/tokenizer)
#   PIP_SPEC  transformers release to test (default: "transformers<5")
# Environment: PYTHON (interpreter for the throwaway venv, default python3),
#              TF4_VENV (reuse this venv instead of creating one in a temporary folder).
# Exits 0 when AutoTokenizer (4.x) gives the same ids as tokenizers.Tokenizer on the original tokenizer.json.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-$repo/../shared/lucie/tokenizer}
spec=${2:-transformers<5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. Export with the project (transformers 5 venv) and record the reference ids from tokenizer.json.
"$repo/.venv/bin/python" - "$src" "$work" <<'PY'
import json, shutil, sys
from pathlib import Path
from tokenizers import Tokenizer
from lucie_nemo.tokenizer import PROBE_TEXT, export_tokenizer, tokenizer_dir

src, work = sys.argv[1], Path(sys.argv[2])
export_tokenizer(src, work / "exported")
shutil.copytree(work / "exported", work / "model")  # the same files beside a Llama config.json
(work / "model" / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
reference = Tokenizer.from_file(str(tokenizer_dir(src) / "tokenizer.json"))
texts = [PROBE_TEXT, "Bonjour", "Hello\n\tworld (x) 'y' \"z\" 12345 😀\u00a0!"]
cases = [{"text": t, "ids": reference.encode(t).ids, "decoded": reference.decode(reference.encode(t).ids)} for t in texts]
(work / "cases.json").write_text(json.dumps(cases))
PY

# 2. Load both folders with AutoTokenizer from transformers 4.x in a throwaway venv and compare.
venv=${TF4_VENV:-$work/venv}
if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/pip" install -q "$spec" tokenizers
fi
"$venv/bin/python" - "$work" <<'PY'
import json, sys
from pathlib import Path
import transformers
from transformers import AutoTokenizer

work = Path(sys.argv[1])
cases = json.loads((work / "cases.json").read_text())
for folder in ("exported", "model"):
    tok = AutoTokenizer.from_pretrained(str(work / folder))
    for case in cases:
        ids = tok.encode(case["text"])
        assert ids == case["ids"], (folder, case["text"], ids, case["ids"])
        assert tok.decode(ids, skip_special_tokens=True) == case["decoded"], (folder, case["text"])
    assert tok.encode("Bonjour")[0] == 0 and tok.encode("Bonjour")[-1] != 1
    assert tok.chat_template == json.loads((work / folder / "tokenizer_config.json").read_text()).get("chat_template")
    print(f"OK transformers {transformers.__version__}: {folder}/ loads as {type(tok).__name__}, "
          f"{len(cases)} texts give the tokenizer.json ids, encode('Bonjour') = {tok.encode('Bonjour')}")
PY
