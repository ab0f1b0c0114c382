"""Network: a VPC over two availability zones, public and private subnets, the
security groups, an S3 gateway endpoint, and a NAT gateway only when asked for."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from sciplat.cloud.config import NetworkConfig
from sciplat_aws.tags import Component

WORLD = "0.0.0.0/0"


class Network(Component):
    component = "network"

    def __init__(self, name: str, config: NetworkConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("sciplat:aws:Network", name, opts)
        zones = aws.get_availability_zones_output(state="available").names
        self.vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=config.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": f"{config.name}"},
            opts=self.child(),
        )
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=self.vpc.id, opts=self.child())
        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=self.vpc.id,
            routes=[{"cidr_block": WORLD, "gateway_id": igw.id}],
            opts=self.child(),
        )
        self.public_subnets = self._subnets(name, config, "public", config.public_subnets, zones, public_rt)
        private_routes = []
        if config.nat_gateway:
            eip = aws.ec2.Eip(f"{name}-nat", domain="vpc", opts=self.child())
            nat = aws.ec2.NatGateway(
                f"{name}-nat",
                allocation_id=eip.id,
                subnet_id=self.public_subnets[0].id,
                opts=self.child(depends_on=[igw]),
            )
            private_routes = [{"cidr_block": WORLD, "nat_gateway_id": nat.id}]
        private_rt = aws.ec2.RouteTable(f"{name}-private", vpc_id=self.vpc.id, routes=private_routes, opts=self.child())
        self.private_subnets = self._subnets(name, config, "private", config.private_subnets, zones, private_rt)
        # S3 traffic stays inside AWS (no NAT charge, no public route needed).
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=self.vpc.id,
            service_name=f"com.amazonaws.{config.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[public_rt.id, private_rt.id],
            opts=self.child(),
        )
        # Where the platform's hosts live: the subnets with an internet route (public
        # without a NAT gateway, private behind one).
        self.host_subnets = self.private_subnets if config.nat_gateway else self.public_subnets

        egress_all = [{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": [WORLD]}]
        # Every host and compute node: traffic between them is open, nothing else comes in.
        self.hosts_sg = aws.ec2.SecurityGroup(
            f"{name}-hosts",
            vpc_id=self.vpc.id,
            description="sciplat hosts: traffic between the platform's hosts",
            egress=egress_all,
            opts=self.child(),
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-hosts-self",
            security_group_id=self.hosts_sg.id,
            referenced_security_group_id=self.hosts_sg.id,
            ip_protocol="-1",
            description="between the platform's hosts",
            opts=self.child(),
        )
        # The gateway: HTTPS from anywhere, SSH from the admin networks (the jump host).
        self.gateway_sg = aws.ec2.SecurityGroup(
            f"{name}-gateway",
            vpc_id=self.vpc.id,
            description="sciplat gateway: HTTPS from anywhere, SSH from the admin networks",
            egress=egress_all,
            opts=self.child(),
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-gateway-https",
            security_group_id=self.gateway_sg.id,
            cidr_ipv4=WORLD,
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            description="HTTPS from anywhere",
            opts=self.child(),
        )
        for i, cidr in enumerate(config.admin_cidrs):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-gateway-ssh-{i}",
                security_group_id=self.gateway_sg.id,
                ip_protocol="tcp",
                from_port=22,
                to_port=22,
                description=f"SSH from admin network {cidr}",
                opts=self.child(),
                **({"cidr_ipv6": cidr} if ":" in cidr else {"cidr_ipv4": cidr}),
            )
        # Managed services: reachable from the platform's hosts only.
        self.efs_sg = self._service_sg(name, "efs", 2049, "NFS (EFS homes) from the platform's hosts")
        self.rds_sg = self._service_sg(name, "rds", 5432, "PostgreSQL (RDS) from the platform's hosts")
        self.register_outputs({"vpc_id": self.vpc.id})

    def _subnets(
        self,
        name: str,
        config: NetworkConfig,
        tier: str,
        cidrs: tuple[str, ...],
        zones: pulumi.Output[list[str]],
        route_table: aws.ec2.RouteTable,
    ) -> list[aws.ec2.Subnet]:
        """One subnet per CIDR, each in its own zone, tied to the tier's route table.
        No public addresses at launch on either tier: instances that need one get an EIP."""
        subnets = []
        for i, cidr in enumerate(cidrs):
            subnet = aws.ec2.Subnet(
                f"{name}-{tier}-{i}",
                vpc_id=self.vpc.id,
                cidr_block=cidr,
                availability_zone=zones[i],
                map_public_ip_on_launch=False,
                tags={"Name": f"{config.name}-{tier}-{i}"},
                opts=self.child(),
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-{tier}-{i}", subnet_id=subnet.id, route_table_id=route_table.id, opts=self.child()
            )
            subnets.append(subnet)
        return subnets

    def _service_sg(self, name: str, what: str, port: int, description: str) -> aws.ec2.SecurityGroup:
        sg = aws.ec2.SecurityGroup(f"{name}-{what}", vpc_id=self.vpc.id, description=description, opts=self.child())
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-{what}-from-hosts",
            security_group_id=sg.id,
            referenced_security_group_id=self.hosts_sg.id,
            ip_protocol="tcp",
            from_port=port,
            to_port=port,
            description=description,
            opts=self.child(),
        )
        return sg
