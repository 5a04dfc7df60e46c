//! How artifacts and steps name each other: an artifact's `steps` (run before its build) and
//! `image-step` (run after it, on its binary), and a step's `artifact:NAME` inputs.

use std::collections::{BTreeMap, BTreeSet};

use toml::Spanned;

use super::{
    ArtifactKind, ConfigError, ImageFormat,
    diagnostic::closest,
    raw::RawArtifact,
    resolve::Resolver,
    step::{ARTIFACT_INPUT, CommandStep, run_order},
};

impl Resolver<'_> {
    /// Every `artifact:NAME` input names an artifact.
    pub(super) fn check_step_artifacts(
        &self,
        steps: &BTreeMap<String, CommandStep>,
        artifacts: &BTreeSet<String>,
    ) -> Result<(), ConfigError> {
        for step in steps.values() {
            for artifact in &step.artifacts {
                if artifacts.contains(artifact) {
                    continue;
                }
                let written = format!("{ARTIFACT_INPUT}{artifact}");
                let index = self.written_inputs(&step.name).iter().position(|i| *i == written).unwrap_or_default();
                let err = self.error(
                    self.input_span(&step.name, index),
                    format!("step.{}.inputs", step.name),
                    format!("no artifact named `{artifact}`"),
                );
                return Err(match closest(artifact, artifacts.iter().map(String::as_str)) {
                    Some(near) => err.with_help(format!("an artifact with a similar name exists: `{near}`")),
                    None => err.with_help("write `artifact:NAME` with the name of an `[artifact.NAME]`"),
                });
            }
        }
        Ok(())
    }

    /// The step an artifact's `image-step` names: it exists and reads this artifact's binary.
    pub(super) fn image_step(
        &self,
        artifact: &str,
        raw: &RawArtifact,
        steps: &BTreeMap<String, CommandStep>,
    ) -> Result<Option<CommandStep>, ConfigError> {
        let Some(name) = &raw.image_step else { return Ok(None) };
        let key = format!("artifact.{artifact}.image-step");
        self.known_step(name, steps, key.clone())?;
        let step = &steps[name.get_ref()];
        if step.artifacts != [artifact] {
            return Err(self
                .error(
                    Some(name.span()),
                    key,
                    format!("step `{}` does not read this artifact's binary alone", step.name),
                )
                .with_help(format!(
                    "its inputs must name `{ARTIFACT_INPUT}{artifact}` (and no other artifact); its command finds the binary as `{{{ARTIFACT_INPUT}{artifact}}}`"
                )));
        }
        if raw.kind != ArtifactKind::Bin || raw.image != ImageFormat::Elf {
            return Err(self
                .error(Some(name.span()), key, "`image-step` makes the image of one ELF binary")
                .with_help("remove `kind` and `image` from this artifact, or the `image-step`"));
        }
        if let Some(later) = run_order(&step.needs, steps).iter().find(|s| !s.artifacts.is_empty()) {
            return Err(self
                .error(
                    Some(name.span()),
                    key,
                    format!("step `{}` runs after step `{}`, which needs a build itself", step.name, later.name),
                )
                .with_help("a step that reads an artifact may only name steps that run before builds"));
        }
        Ok(Some(step.clone()))
    }

    /// Checks the names in an artifact's `steps` and returns the steps it needs, in the order
    /// they run (each after the steps it names).
    pub(super) fn artifact_steps(
        &self,
        artifact: &str,
        names: &[Spanned<String>],
        steps: &BTreeMap<String, CommandStep>,
    ) -> Result<Vec<CommandStep>, ConfigError> {
        for name in names {
            self.known_step(name, steps, format!("artifact.{artifact}.steps"))?;
        }
        let wanted: Vec<String> = names.iter().map(|n| n.get_ref().clone()).collect();
        let order = run_order(&wanted, steps);
        if let Some(after) = order.iter().find(|step| !step.artifacts.is_empty()) {
            let span = names.iter().find(|n| n.get_ref() == &after.name).map(Spanned::span).filter(|s| !s.is_empty());
            return Err(self
                .error(
                    span,
                    format!("artifact.{artifact}.steps"),
                    format!(
                        "step `{}` reads a built artifact (`{ARTIFACT_INPUT}{}`), so it cannot run before a build",
                        after.name,
                        after.artifacts.join("`, `artifact:")
                    ),
                )
                .with_help("boot its output with `image-step` instead, or remove it from `steps`"));
        }
        Ok(order)
    }
}
