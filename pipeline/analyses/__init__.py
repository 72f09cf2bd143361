"""Per-image analyses beside render, each one concept on top of models/, deconv/ and render/:

* ``reconstruct``: one image projected back to pixels from a whole layer (what the layer keeps);
* ``occlude``: occlusion sensitivity of a unit or a class score (Zeiler & Fergus Fig. 7);
* ``pooled`` + ``embed``: a 2-D map of a collection by a layer's pooled features, with the
  leave-one-out k-NN category accuracy that says whether the layer separates the categories.

``inputs`` turns image files into the uint8 pixels the network sees, as mining does.
"""
