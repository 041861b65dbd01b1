"""What the weight-perturbation fits (``fit_vadam``, ``fit_ivon``) share: how they read a Pyro
model (:mod:`.model`) and how they train and build the result (:mod:`.training`)."""
