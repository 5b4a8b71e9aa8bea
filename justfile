# xferlab recipes. `just --list` shows them.

# Run a sweep (resumes what is done): just sweep experiments/quickstart.yaml --set train.lr=0.01
sweep SPEC *ARGS:
    cargo run --release -- run {{SPEC}} {{ARGS}}

# The quickstart sweep on built-in generated data.
quickstart:
    cargo run --release -- run experiments/quickstart.yaml

# Check a spec; prints nothing but errors.
validate SPEC *ARGS:
    cargo run --release -- validate {{SPEC}} {{ARGS}}

# Show the trial table of a spec.
plan SPEC *ARGS:
    cargo run --release -- plan {{SPEC}} {{ARGS}}

# Result tables of a sweep folder or spec: just report runs/quickstart --html page.html
report RUN *ARGS:
    cargo run --release -- report {{RUN}} {{ARGS}}

# Then: MLFLOW_TRACKING_URI=http://127.0.0.1:5000 just sweep experiments/quickstart.yaml
# A local MLflow tracking server on 127.0.0.1:PORT (SQLite store and artifacts in .mlflow/).
mlflow PORT="5000":
    mkdir -p .mlflow
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$(scripts/mlflow-venv)" server --host 127.0.0.1 --port {{PORT}} --workers 1 --backend-store-uri "sqlite:///$PWD/.mlflow/mlflow.db" --artifacts-destination "$PWD/.mlflow/artifacts"

# Upload to the tracking server what a sweep's run store has and it has not: just sync runs/quickstart
sync RUN *ARGS:
    cargo run --release -- sync {{RUN}} {{ARGS}}

# Every test (installs the test data first when missing).
test *ARGS:
    scripts/test {{ARGS}}

# Regenerate the committed JSON Schema after changing the spec types.
schema:
    cargo run --release -- schema > schemas/experiment.schema.json

# First the bounded property test with many cases, then coverage-guided libFuzzer through
# cargo-fuzz (`cargo install cargo-fuzz`; RUSTC_BOOTSTRAP lets the stable toolchain build it).
# Fuzz the spec loader, the --set parser and the planner for SECONDS.
fuzz SECONDS="600":
    FUZZ_CASES=100000 cargo test --test fuzz_spec -- --nocapture
    mkdir -p fuzz/corpus/spec_loader
    cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run spec_loader corpus/spec_loader seeds/spec_loader -- -max_total_time={{SECONDS}} -timeout=10 -rss_limit_mb=4096

# Build with candle's CUDA backend (no GPU or CUDA install needed here: CUDA 13.0 from pip
# wheels) into target/cuda and pack .gpu/ for a GPU machine; CUDNN=1 adds a cuDNN build.
build-gpu *ARGS:
    scripts/build-gpu {{ARGS}}

# CPU speed of the speed-ups on benches/cpu.yaml: trials per minute with frozen blocks run
# every step, with the feature cache, and with the cache and --jobs 2 (about 12 minutes).
bench-cpu SPEC="benches/cpu.yaml":
    scripts/bench-cpu {{SPEC}}

# xferlab's kernels (conv backward, fused Adam) against candle's on DEVICE: agreement, then time.
bench-kernels DEVICE="auto":
    cargo bench --bench kernels -- {{DEVICE}}

# On a GPU machine: fmnist-a-to-b in xferlab and in its PyTorch twin, times and results side
# by side: just bench-gpu --jobs 8
bench-gpu *ARGS:
    scripts/bench-gpu {{ARGS}}
