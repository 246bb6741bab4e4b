"""Saving and loading Keras models as ``.h5`` (the format QAT models reload from)."""

from pathlib import Path

from pipeline.store.atomic import atomic_path


def custom_objects() -> dict:
    from models import CUSTOM_OBJECTS

    return dict(CUSTOM_OBJECTS)


def save_keras(model, path: Path) -> None:
    """Saves atomically as HDF5 (``.keras`` fails to reload QAT models)."""
    with atomic_path(Path(path), suffix=".h5") as tmp:
        model.save(str(tmp), save_format="h5", include_optimizer=False)


def load_keras(path: Path, quantized: bool = False):
    """Loads a model saved by :func:`save_keras`; ``quantized`` for QAT models."""
    import tf_keras as keras

    if quantized:
        from models.quantize import quantize_scope

        with quantize_scope():
            return keras.models.load_model(str(path), compile=False)
    return keras.models.load_model(str(path), custom_objects=custom_objects(), compile=False)


def load_keras_file(path: Path):
    """:func:`load_keras` of a file a user named: an unreadable one is a
    :class:`pipeline.errors.ModelFileError` naming it, not a traceback."""
    from pipeline.errors import ModelFileError

    try:
        return load_keras(path)
    except (OSError, ValueError, KeyError) as e:  # h5py: OSError; Keras: ValueError/KeyError on a bad config
        detail = str(e).splitlines()[0] if str(e) else "no detail"
        raise ModelFileError(f"{path}: not a Keras model file this tool can read ({type(e).__name__}: {detail})") \
            from None
