"""Saving and loading Keras models as ``.h5`` (the format QAT models reload from)."""

from collections import OrderedDict
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


#: Files :func:`load_keras_shared` keeps loaded: a build's float source and its QAT model.
SHARED_MODELS = 2
_shared: "OrderedDict[tuple, object]" = OrderedDict()


def load_keras_shared(path: Path, quantized: bool = False):
    """:func:`load_keras` for callers that only read the model (conversion, reload
    checks): the last :data:`SHARED_MODELS` files stay loaded, keyed by path, inode,
    size and modification time, so that the variants converted from one file load it
    once (loading a QAT model takes seconds). Never train or change what this returns."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns, quantized)
    if key in _shared:
        _shared.move_to_end(key)
        return _shared[key]
    model = load_keras(p, quantized=quantized)
    _shared[key] = model
    while len(_shared) > SHARED_MODELS:
        _shared.popitem(last=False)
    return model


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
