#!/usr/bin/env bash
# An AKS cluster for Homeport with the az CLI: create, deploy, delete.
#   bash deploy/aks/create.sh            # resource group, cluster (Azure CNI + network policy)
#   HOMEPORT_DATABASE_URL=postgres://…postgres.database.azure.com:5432/homeport?sslmode=require \
#     HOMEPORT_VAULT_TOKEN_FILE=… HOMEPORT_CIRA_CERT=cira.pem HOMEPORT_CIRA_KEY=cira.key \
#     HOMEPORT_RPS_CERT=rps.pem HOMEPORT_RPS_KEY=rps.key bash deploy/k8s/make-secrets.sh
#   kubectl apply -k deploy/k8s/overlays/aks
#   az group delete --name "$AKS_GROUP" --yes     # delete everything
set -euo pipefail
AKS_GROUP="${AKS_GROUP:-homeport}"
AKS_NAME="${AKS_NAME:-homeport}"
AKS_LOCATION="${AKS_LOCATION:-westeurope}"
az group create --name "$AKS_GROUP" --location "$AKS_LOCATION" --output none
az aks create --resource-group "$AKS_GROUP" --name "$AKS_NAME" \
  --kubernetes-version 1.33 --node-count 3 --node-vm-size Standard_D2s_v5 \
  --network-plugin azure --network-policy azure --load-balancer-sku standard \
  --enable-cluster-autoscaler --min-count 3 --max-count 6 \
  --generate-ssh-keys --output none
az aks get-credentials --resource-group "$AKS_GROUP" --name "$AKS_NAME" --overwrite-existing
echo "cluster ready: now make the secrets and apply deploy/k8s/overlays/aks (see the header)"
