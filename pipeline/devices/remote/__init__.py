"""Measuring a model on a real board or phone instead of the emulator.

``ssh://[USER@]HOST[:PORT]`` runs the emulator's own guest script
(:mod:`pipeline.devices.guest_runner`) with the board's python and TFLite runtime, in
timing mode, and compares its outputs with the host's (:mod:`.ssh_run`);
``adb://SERIAL`` runs TFLite's ``benchmark_model`` on an Android device (:mod:`.adb`).
Each successful run is appended to the local store of measured points (:mod:`.store`).
"""
