"""MLflow, by job: `runs` (the store, experiments, runs and their nesting), `files` (a model's
safetensors + JSON files: logging and loading) and `registry` (models:/ URIs, versions, the
champion alias). The names callers use are re-exported here:

    from pipeline.tracking import load_vqvae
    model = load_vqvae("models:/vqvae-demo@champion")
"""
from pipeline.tracking.files import (CONFIG_FILE, WEIGHTS_FILE, load_model, load_prior, load_vqvae, log_model,
                                     model_metadata, save_model_files, weights_digest)
from pipeline.tracking.registry import (METRIC_TAG_PREFIX, is_not_found, parse_models_uri, register_model,
                                        resolve, scale_tags, set_alias, upgrade_tags)
from pipeline.tracking.runs import (HEALTH_TIMEOUT_S, check_server, children_of, parent_tag, set_tracking_uri,
                                    setup_tracking, sqlite_path, start_run)

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_model", "load_prior", "load_vqvae", "log_model", "model_metadata",
           "save_model_files", "weights_digest", "METRIC_TAG_PREFIX", "is_not_found", "parse_models_uri", "register_model", "resolve",
           "scale_tags", "set_alias", "upgrade_tags", "HEALTH_TIMEOUT_S", "check_server", "children_of", "parent_tag", "set_tracking_uri",
           "setup_tracking", "sqlite_path", "start_run"]
