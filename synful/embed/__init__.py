"""Self-supervised synapse embeddings: SimCLR (Chen et al. 2020) on 3D EM cubes around synapses.

A cube of ``input_shape`` voxels (z, y, x) centred on each synapse holds raw, the pre-synaptic and the
post-synaptic neuron mask (and a cleft mask when a cleft dataset exists); a small 3D ResNet encodes it, a
two-layer MLP projects to ``projection_dim`` and the NT-Xent loss pulls two augmented views of one synapse
together.  The encoder's output is the embedding, stored per synapse as float16.

Modules (TensorFlow loads only in model / train / predict):

- :mod:`.data`      synapses from the transmitter store or a run's partner collection; cubes; augmentations
- :mod:`.model`     the encoder, the projector, :func:`~.model.nt_xent_loss`
- :mod:`.train`     resumable training (``model_<it>.weights.h5``), TensorBoard
- :mod:`.predict`   embeddings into ``<database>_embeddings.<exp>_t<T>_p<P>``
- :mod:`.evaluate`  linear probe, silhouette, Hopkins statistic, UMAP / PCA pictures

CLI: ``synful embed {train,predict,evaluate}``; setups: ``prepare_training.py --kind embedding``.
"""

__all__ = ["train", "predict", "evaluate_run", "read_embeddings", "nt_xent_loss", "augment", "hopkins",
           "linear_probe"]


def __getattr__(name):
    # imported on demand, so `import synful.embed` stays light (no TensorFlow)
    if name == "train":
        from .train import train
        return train
    if name in ("predict", "read_embeddings"):
        from . import predict as m
        return getattr(m, name)
    if name in ("evaluate_run", "hopkins", "linear_probe"):
        from . import evaluate as m
        return getattr(m, name)
    if name == "nt_xent_loss":
        from .model import nt_xent_loss
        return nt_xent_loss
    if name == "augment":
        from .data import augment
        return augment
    raise AttributeError(name)
