"""What reviewers see and do: gallery, ratings, export, provider figures."""
