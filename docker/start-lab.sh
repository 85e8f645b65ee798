#!/usr/bin/env bash
# Run by the image's start script before JupyterLab (docker-stacks' before-notebook.d hook), and by
# z2jh's postStart hook: give the student their own copy of the notebooks, once.
# An existing ~/disk-to-vram is never touched: a student's work survives restarts and image updates
# (new notebooks of a later image are added beside it; changed ones are not overwritten).
set -eu
target="${HOME}/disk-to-vram"
mkdir -p "$target"
for notebook in "${LABKIT_HANDOUT:-/opt/disk-to-vram/handout}"/*.ipynb; do
    [ -e "$target/$(basename "$notebook")" ] || cp "$notebook" "$target/"
done
