"""TinyVAE, the image product: crops of photographs, the model, its training, trust, VQ, int8.

``images`` builds the crop sets, ``model`` is the network and its loss, ``train`` and ``cli``
train and save it, ``quality`` and ``report`` measure it against PCA and JPEG, ``trust``,
``vq`` and ``int8`` are what serving loads beside the weights. Imports ``validator_actors``
only for argument checks; nothing of the compressor.
"""
