"""Static files in production: hashed names, compressed, served by WhiteNoise."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    # The pages' scripts are ES modules importing each other; rewrite those imports to
    # the hashed names too, so a browser never mixes files from two releases.
    support_js_module_import_aggregation = True
