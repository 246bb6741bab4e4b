"""Emulated ARM devices: run .tflite models on the real ARM runtimes under qemu-aarch64.

Modules (host side unless noted):
    targets       emulated cores and guest runtimes (pure data)
    profiles      device profiles (profile_data/*.yaml), DEVICES registry, get_device()
    runtime       builds/caches the arm64 userland, wheels and qemu plugin: ensure_runtime()
    guest_runner  the script run inside the emulated python (guest)
    runner        drives qemu: run_on_device() -> DeviceRun (raw files)
    parse         pure parsers of the plugin's counts and the guest's result
    model_io      any model's inputs (random, by name from an .npz) and per-output comparison
    check         run_device_check() -> DeviceResult: the entry point for the pipeline
    cli           click commands `devices` and `device run`
    plugin/       insn_count.c, our instruction-counting qemu TCG plugin

Importing this package is cheap: nothing heavy is imported here.
"""
