"""ComponentResources of sciplat's AWS stack; each takes one typed config object
from :mod:`sciplat.cloud.config`."""
