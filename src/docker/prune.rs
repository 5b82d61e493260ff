//! Keeping the daemon's disk in check after builds. With the classic builder the layer cache
//! *is* the images (each step's result is an intermediate image), so "build cache above
//! keep_storage" means: the oldest slipway-built images go first, their private layers with them.

use std::collections::{HashMap, HashSet};

use bollard::models::ImageSummary;
use bollard::query_parameters::{
    ListImagesOptionsBuilder, PruneImagesOptionsBuilder, RemoveImageOptionsBuilder,
};

use super::{DockerEngine, DockerError};

/// The label every slipway build carries; `prune` removes only images that have it (and
/// dangling ones), never an operator's or a task's image.
pub const APP_LABEL: &str = "slipway.app";

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Image records deleted (intermediate layers included).
    pub images_deleted: u64,
    /// Bytes of image layers freed.
    pub space_reclaimed: u64,
}

impl DockerEngine {
    /// Removes dangling images, then, while image layers take more than `keep_storage_bytes`,
    /// the oldest images labelled [`APP_LABEL`] together with the intermediate images only
    /// they used. Images in use by a container are skipped. Call it between builds: an image
    /// built but not yet pushed is a candidate like any other.
    ///
    /// BuildKit's cache (`/build/prune`) is left alone: slipway builds never fill it, and
    /// bollard 0.21 cannot send the `keep-storage` a 20.10 daemon understands, so the call would
    /// empty it.
    pub async fn prune(&self, keep_storage_bytes: u64) -> Result<PruneReport, DockerError> {
        let api = |source| DockerError::Api {
            operation: "prune",
            source,
        };
        let dangling = HashMap::from([("dangling", vec!["true"])]);
        let pruned = self
            .docker
            .prune_images(Some(
                PruneImagesOptionsBuilder::new().filters(&dangling).build(),
            ))
            .await
            .map_err(api)?;
        let mut report = PruneReport {
            images_deleted: pruned
                .images_deleted
                .unwrap_or_default()
                .iter()
                .filter(|item| item.deleted.is_some())
                .count() as u64,
            space_reclaimed: pruned.space_reclaimed.unwrap_or(0).max(0) as u64,
        };

        let mut in_use = HashSet::new();
        let mut images = self.list_all_images().await?;
        let storage_before = layer_storage(&images);
        while layer_storage(&images) > keep_storage_bytes {
            let Some(oldest) = oldest_build_image(&images, &in_use) else {
                break;
            };
            let remove = RemoveImageOptionsBuilder::new().force(true).build();
            match self.docker.remove_image(&oldest, Some(remove), None).await {
                Ok(items) => {
                    report.images_deleted +=
                        items.iter().filter(|item| item.deleted.is_some()).count() as u64;
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) => {
                    in_use.insert(oldest);
                }
                Err(source) => return Err(api(source)),
            }
            images = self.list_all_images().await?;
        }
        report.space_reclaimed += storage_before.saturating_sub(layer_storage(&images));
        tracing::debug!(?report, keep_storage_bytes, "pruned images");
        Ok(report)
    }

    pub(crate) async fn list_all_images(&self) -> Result<Vec<ImageSummary>, DockerError> {
        let all = ListImagesOptionsBuilder::new().all(true).build();
        self.docker
            .list_images(Some(all))
            .await
            .map_err(|source| DockerError::Api {
                operation: "prune",
                source,
            })
    }
}

/// Bytes the images' layers take: an image's `Size` includes its parent's, so each image adds
/// the difference (the layer its step made). Images without a local parent (imported, pulled)
/// count whole, so layers shared between pulled images are counted once per image.
pub(crate) fn layer_storage(images: &[ImageSummary]) -> u64 {
    let size_of: HashMap<&str, i64> = images.iter().map(|i| (i.id.as_str(), i.size)).collect();
    images
        .iter()
        .map(|image| {
            let parent = size_of.get(image.parent_id.as_str()).copied().unwrap_or(0);
            (image.size - parent).max(0) as u64
        })
        .sum()
}

/// The id of the oldest slipway-built image not known to be in use.
fn oldest_build_image(images: &[ImageSummary], in_use: &HashSet<String>) -> Option<String> {
    images
        .iter()
        .filter(|image| image.labels.contains_key(APP_LABEL) && !in_use.contains(&image.id))
        .min_by_key(|image| image.created)
        .map(|image| image.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, parent: &str, size: i64, created: i64, built: bool) -> ImageSummary {
        let labels = if built {
            HashMap::from([(APP_LABEL.to_owned(), id.to_owned())])
        } else {
            HashMap::new()
        };
        ImageSummary {
            id: id.into(),
            parent_id: parent.into(),
            size,
            created,
            labels,
            ..ImageSummary::default()
        }
    }

    #[test]
    fn layer_storage_counts_shared_parents_once() {
        let images = [
            image("base", "", 100, 1, false),
            image("step", "base", 130, 2, false),
            image("app1", "step", 150, 3, true),
            image("app2", "step", 135, 4, true),
        ];
        assert_eq!(layer_storage(&images), 100 + 30 + 20 + 5);
    }

    #[test]
    fn oldest_labelled_image_not_in_use_goes_first() {
        let images = [
            image("base", "", 100, 0, false),
            image("app1", "base", 150, 3, true),
            image("app2", "base", 135, 4, true),
            image("app3", "base", 135, 5, true),
        ];
        let in_use = HashSet::from(["app1".to_owned()]);
        assert_eq!(
            oldest_build_image(&images, &in_use).as_deref(),
            Some("app2")
        );
    }

    #[test]
    fn unlabelled_images_are_never_candidates() {
        let images = [image("base", "", 100, 0, false)];
        assert_eq!(oldest_build_image(&images, &HashSet::new()), None);
    }
}
