#!/usr/bin/env bash
# Create the security group cluster.yaml's nodes use (run once, on your machine, with AWS credentials):
#
#   cluster/security_group.sh VPC_ID SSH_CIDR [REGION]
#   e.g. cluster/security_group.sh vpc-0abc... 203.0.113.7/32 us-west-2
#
# The group admits
#   - SSH (TCP 22) from SSH_CIDR only: your address or your office's range, never 0.0.0.0/0;
#   - every protocol and port from members of the same group, i.e. between the cluster's own nodes
#     (Ray's GCS, raylets, object transfer, NCCL, the MLflow server on the head);
# and nothing else. Put the printed id into SecurityGroupIds of both node types in cluster.yaml, and let
# the EFS mount targets' group accept NFS (TCP 2049) from this group (command printed at the end).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 VPC_ID SSH_CIDR [REGION]" >&2
  exit 2
fi
VPC_ID=$1
SSH_CIDR=$2
REGION=${3:-us-west-2}
if ! [[ $SSH_CIDR =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])$ ]]; then
  echo "SSH_CIDR must look like 203.0.113.7/32, got '$SSH_CIDR'" >&2
  exit 2
fi
if [[ ${SSH_CIDR#*/} -lt 8 ]]; then
  echo "refusing SSH from $SSH_CIDR: that is (almost) the whole internet" >&2
  exit 2
fi
GROUP_NAME=${GROUP_NAME:-dynconv-cluster}
SG_ID=$(aws ec2 create-security-group --region "$REGION" --vpc-id "$VPC_ID" --group-name "$GROUP_NAME" \
  --description "dynconv Ray cluster: SSH from $SSH_CIDR, all traffic between members" \
  --query GroupId --output text)
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG_ID" \
  --ip-permissions "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=$SSH_CIDR,Description=ssh}]"
aws ec2 authorize-security-group-ingress --region "$REGION" --group-id "$SG_ID" \
  --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$SG_ID,Description=cluster-nodes}]"
echo "created $SG_ID; set SecurityGroupIds: [$SG_ID] on both node types in cluster.yaml"
echo "EFS: aws ec2 authorize-security-group-ingress --region $REGION --group-id <EFS mount target group>" \
  "--ip-permissions 'IpProtocol=tcp,FromPort=2049,ToPort=2049,UserIdGroupPairs=[{GroupId=$SG_ID}]'"
