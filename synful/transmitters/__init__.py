"""Neurotransmitter classification of synapses (the Synister workflow, Eckstein et al., Cell 2024).

Stages, one module each (imported on demand; TensorFlow loads only in train/predict):

- :mod:`.db`        document store for both backends (``sqlite:///path``, ``mongodb://host:port``)
- :mod:`.data`      import / export of synapse, skeleton and hemilineage JSON exports
- :mod:`.splits`    train / validation / test splits: random, by skeleton, by hemilineage
- :mod:`.model`     the VGG3D classifier (Keras 3)
- :mod:`.train`     gunpowder pipeline with class-balanced sampling, resumable training
- :mod:`.predict`   per-run prediction collections ``<db>_predictions.<split>_<exp>_t<T>_p<P>``
- :mod:`.evaluate`  accuracy per synapse, skeleton and class; confusion matrices
- :mod:`.synthetic_export`  Synister-style records from a synthetic volume

CLI: ``synful transmitter {import,split,train,predict,evaluate,synthetic}``.
"""
