"""Recipe YAML files, installed as the package data ``dagan_tf.configs``."""
