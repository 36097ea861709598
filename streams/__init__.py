"""Stream processing: events, the policy and the decision core, codecs, and the Faust pipeline."""
