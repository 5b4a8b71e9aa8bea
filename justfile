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

# Result table of a sweep folder (runs/NAME) or spec: just report runs/quickstart --format md
report RUN *ARGS:
    cargo run --release -- report {{RUN}} {{ARGS}}

# Every test (installs the test data first when missing).
test *ARGS:
    scripts/test {{ARGS}}

# Regenerate the committed JSON Schema after changing the spec types.
schema:
    cargo run --release -- schema > schemas/experiment.schema.json
