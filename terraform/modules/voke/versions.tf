# Secret Manager's service agent is made with google-beta's google_project_service_identity.
terraform {
  required_providers {
    google = {
      source = "hashicorp/google"
    }
    google-beta = {
      source = "hashicorp/google-beta"
    }
  }
}
