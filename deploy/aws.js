// What serverless.yml reads from the environment at `serverless package` / `deploy` time, beyond
// plain ${env:...} values:
//
//   vpc:          ${file(./deploy/aws.js):vpc, null}
//                 VPC_SUBNET_IDS and VPC_SECURITY_GROUP_IDS (comma-separated) -> provider.vpc; both
//                 unset -> no VPC (null); one without the other is an error.
//   s3Statements: ${file(./deploy/aws.js):s3Statements}
//                 The functions' IAM permissions on the bucket of STORAGE_URL (s3://bucket/prefix)
//                 and nothing else: objects under the prefix (the S3 calls of shared/storage/s3.py:
//                 get, head = s3:GetObject, put and multipart = s3:PutObject, abort =
//                 s3:AbortMultipartUpload, delete), and s3:ListBucket on the bucket itself, which
//                 HeadBucket (/healthz) needs and which makes a missing key a 404 instead of a 403.
//                 Without an s3:// STORAGE_URL no statement: the functions refuse to run anyway.
'use strict';

function ids(name, prefix) {
  const list = (process.env[name] || '').split(',').map((id) => id.trim()).filter(Boolean);
  for (const id of list) {
    if (!id.startsWith(prefix)) throw new Error(`${name}: ${JSON.stringify(id)} is not a ${prefix}... id`);
  }
  return list;
}

module.exports.vpc = () => {
  const subnetIds = ids('VPC_SUBNET_IDS', 'subnet-');
  const securityGroupIds = ids('VPC_SECURITY_GROUP_IDS', 'sg-');
  if (!subnetIds.length && !securityGroupIds.length) return null;
  if (!subnetIds.length || !securityGroupIds.length) {
    throw new Error('VPC_SUBNET_IDS and VPC_SECURITY_GROUP_IDS: set both (a Lambda in a VPC needs subnets and security groups) or neither');
  }
  return { subnetIds, securityGroupIds };
};

module.exports.s3Statements = () => {
  const match = /^s3:\/\/([^/]+)\/*(.*)$/.exec(process.env.STORAGE_URL || '');
  if (!match) return [];
  const bucket = match[1];
  const prefix = match[2].replace(/\/+$/, '');
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new Error(`STORAGE_URL: ${JSON.stringify(bucket)} is not an S3 bucket name`);
  }
  const objects = `arn:aws:s3:::${bucket}/${prefix ? `${prefix}/` : ''}*`;
  return [
    {
      Effect: 'Allow',
      Action: ['s3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload'],
      Resource: [objects],
    },
    { Effect: 'Allow', Action: ['s3:ListBucket'], Resource: [`arn:aws:s3:::${bucket}`] },
  ];
};
